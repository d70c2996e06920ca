"""A vLLM OpenAI server seen from the service: is it vLLM, and which LoRA adapters does it hold.

A promoted LLaMA version is served by vLLM as a LoRA adapter named after the version, loaded at run
time through vLLM's runtime LoRA API (the server runs with ``--enable-lora`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``; ``POST /v1/load_lora_adapter`` and
``/v1/unload_lora_adapter``). Loading is idempotent: a name the server already holds is left as it
is, so API replicas that pick up the same promotion load it once between them. The server reads the
adapter folder itself: it must see the model folder at the same path as the service (one volume
mounted at the same place in both containers).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx

from recommender.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

# vLLM's LoRAConfig accepts these max_lora_rank values only (vllm/config/lora.py).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def check_lora_rank(rank: int) -> int:
    """``rank`` when vLLM can serve a LoRA of that rank, else one ConfigError naming the allowed ones."""
    if rank not in LORA_RANKS:
        allowed = ", ".join(str(r) for r in LORA_RANKS)
        raise ConfigError(f"vLLM serves LoRA ranks {allowed} only, got lora_r [{rank}]")
    return rank


def adapter_rank(folder: Path) -> int:
    """The rank ``r`` of the PEFT adapter in ``folder`` (its adapter_config.json)."""
    try:
        return int(json.loads((Path(folder) / "adapter_config.json").read_text("utf-8"))["r"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelError("no readable adapter_config.json with a rank [r]", source=folder) from None


class VllmServer:
    """The model list and runtime LoRA API of one vLLM OpenAI-compatible server."""

    def __init__(self, url: str, *, timeout_s: float = 60.0, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)

    def close(self) -> None:
        self._client.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self._client.request(method, self.url + path, **kw)
        except httpx.TransportError as e:
            raise ModelError(f"vLLM server [{self.url}] unreachable ({type(e).__name__})") from None

    def version(self) -> str | None:
        """vLLM's version, None when the server is not vLLM (no ``/version`` answer naming one);
        ModelError when it cannot be reached."""
        r = self._request("GET", "/version")
        try:
            data = r.json() if r.status_code == 200 else None
        except ValueError:
            return None
        version = data.get("version") if isinstance(data, dict) else None
        return version if isinstance(version, str) else None

    def models(self) -> dict[str, str | None]:
        """Every model name the server answers to, with its parent (the base model of a LoRA, else None)."""
        r = self._request("GET", "/v1/models")
        try:
            data = r.json()["data"] if r.status_code == 200 else None
            return {m["id"]: m.get("parent") for m in data}
        except (ValueError, KeyError, TypeError):
            raise ModelError(f"vLLM server [{self.url}] gave no model list ({r.status_code})") from None

    def adapters(self) -> set[str]:
        """The LoRA adapters the server holds now."""
        return {name for name, parent in self.models().items() if parent is not None}

    def load(self, name: str, folder: Path) -> bool:
        """Load the adapter in ``folder`` as ``name``; False when the server already had that name."""
        body = {"lora_name": name, "lora_path": str(Path(folder).resolve())}
        r = self._request("POST", "/v1/load_lora_adapter", json=body)
        if r.status_code == 200:
            log.info("vLLM [%s] loaded adapter [%s]", self.url, name)
            return True
        if r.status_code == 400 and "already" in r.text:  # another replica was first
            return False
        raise ModelError(f"vLLM server [{self.url}] refused adapter [{name}] ({r.status_code}: {reason(r)})")

    def unload(self, name: str) -> bool:
        """Unload the adapter ``name``; False when the server did not hold it."""
        r = self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        if r.status_code == 200:
            log.info("vLLM [%s] unloaded adapter [%s]", self.url, name)
            return True
        if r.status_code in (400, 404):  # not loaded (a restarted server, another replica was first)
            return False
        raise ModelError(f"vLLM server [{self.url}] could not unload [{name}] ({r.status_code}: {reason(r)})")

    def ensure(self, name: str, folder: Path) -> bool:
        """Make sure the server holds ``name`` (loading it from ``folder``); True when it was loaded now."""
        if name in self.adapters():
            return False
        return self.load(name, folder)


def reason(r: httpx.Response) -> str:
    """A server's one-line reason for an error answer (its JSON error message, else the body's start)."""
    try:
        data = r.json()
        message = data.get("error", data.get("detail", data)) if isinstance(data, dict) else data
        if isinstance(message, dict):
            message = message.get("message", message)
    except ValueError:
        message = r.text
    return " ".join(str(message).split())[:200]


__all__ = ["LORA_RANKS", "VllmServer", "adapter_rank", "check_lora_rank", "reason"]
