"""Generation engines beyond the in-process one, and the choice among them by configuration.

``transformers`` (:class:`~recommender.extractors.llama.generation.TransformersEngine`) decodes in
this process. ``openai`` sends each prompt to an OpenAI-compatible ``/v1/completions`` server (vLLM,
``transformers serve``, llama.cpp's server) for scale-out: greedy, the same stop string and token
cap, token log-probabilities where the server returns them (``logprobs``), else none, so span scores
are None rather than invented. Against vLLM (found by its ``/version``) the copy-or-tag constraint
goes as its ``structured_outputs`` grammar (the language the in-process engine decodes under), and a
model folder's LoRA adapter is loaded into the server at run time under the model's version
(:mod:`~recommender.extractors.llama.vllm_server`).
vLLM in this process is not offered: a second ``LLM`` built after a reload asks for GPU memory the
first still holds, vLLM needs numpy >= 2 where this package pins numpy < 2, and the server covers it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from recommender.errors import ModelError
from recommender.extractors.llama.config import LlamaConfig
from recommender.extractors.llama.constrained import CopyOrTag
from recommender.extractors.llama.generation import Engine, Generation, Prompt
from recommender.extractors.llama.task import STOP
from recommender.extractors.llama.vllm_server import VllmServer, adapter_rank, check_lora_rank, reason

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class OpenAIEngine(Engine):
    """Greedy completions from an OpenAI-compatible server, ``concurrency`` requests at a time.

    A connection failure, a timeout or a 408/429/5xx answer is retried ``retries`` times with
    exponential backoff; then, or at once for any other error or an answer that is not a completion,
    one :class:`ModelError` names the URL and what went wrong (never the prompt: it is note text).

    With ``adapter`` (a LoRA folder) and ``server`` (vLLM), ``model`` is the adapter's name there:
    it is loaded before the first completion and again when the server answers 404 for it (a
    restarted, empty server), until :meth:`retire` (a newer version took over: never load it back).
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        max_new_tokens: int = 512,
        stop: str = STOP,
        timeout_s: float = 120.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        concurrency: int = 4,
        logprobs: bool = True,
        structured: bool = False,
        api_key: str | None = None,
        adapter: Path | None = None,
        server: VllmServer | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/v1/completions"
        self.adapter = adapter if server is not None else None
        self.server = server
        self._adapter_loaded = False
        self._retired = False
        self._adapter_lock = threading.Lock()
        self.structured = structured
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.stop = stop
        self.retries = retries
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self.logprobs = logprobs
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = httpx.Client(timeout=timeout_s, limits=limits, headers=headers)

    def close(self) -> None:
        self._client.close()
        if self.server is not None:
            self.server.close()

    def load_adapter(self, *, check: bool = True) -> None:
        """Have the server hold this engine's adapter (no-op without one). ``check``: ask the server
        first; else load at once (it answered 404 for the name)."""
        if self.adapter is None or self.server is None:
            return
        with self._adapter_lock:
            if self._retired:
                raise ModelError(f"adapter [{self.model}] was superseded; not loading it again")
            if check and self._adapter_loaded:
                return
            if check:
                self.server.ensure(self.model, self.adapter)
            else:
                self.server.load(self.model, self.adapter)
            self._adapter_loaded = True

    def retire(self) -> None:
        """A newer version took over: unload this adapter from the server (best effort) and never
        load it again (a request still running on it gets an error, not a revived old version)."""
        if self.adapter is None or self.server is None:
            return
        with self._adapter_lock:
            self._retired = True
            try:
                self.server.unload(self.model)
            except ModelError as e:
                log.warning("%s", e)

    def generate(
        self, prompts: Sequence[Prompt], *, between_steps: Callable[[], None] | None = None
    ) -> list[Generation]:
        self.load_adapter()
        if len(prompts) <= 1:
            return [self._complete(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._complete, prompts))

    def _complete(self, prompt: Prompt) -> Generation:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt.prefix + prompt.text,
            "max_tokens": self.max_new_tokens,
            "temperature": 0.0,
            "top_p": 1.0,
            "n": 1,
            "stop": [self.stop],
        }
        if self.logprobs:
            body["logprobs"] = 0  # the chosen token's log-probability, no alternatives
        if self.structured and prompt.language is not None:
            body["structured_outputs"] = {"grammar": CopyOrTag.of(prompt.language, self.stop).grammar()}
        try:
            return self._parse(self._post(body))
        except _ModelMissing:
            self.load_adapter(check=False)  # the server restarted without it: load it again, once
            return self._parse(self._post(body))

    def _post(self, body: dict[str, Any]) -> Any:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                r = self._client.post(self.url, json=body)
            except httpx.TransportError as e:  # refused, reset, timed out
                if last:
                    raise ModelError(
                        f"generation server [{self.url}] unreachable after {attempt + 1} tries "
                        f"({type(e).__name__})"
                    ) from None
            else:
                if r.status_code < 400:
                    try:
                        return r.json()
                    except ValueError:
                        raise ModelError(
                            f"generation server [{self.url}] answered {r.status_code} with no JSON"
                        ) from None
                if r.status_code == 404 and self.adapter is not None and not self._retired:
                    raise _ModelMissing(f"generation server [{self.url}] has no model [{self.model}]")
                if last or r.status_code not in RETRY_STATUS:
                    raise ModelError(f"generation server [{self.url}] answered {r.status_code}: {reason(r)}")
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _parse(self, data: Any) -> Generation:
        try:
            choice = data["choices"][0]
            text = choice["text"]
            if not isinstance(text, str):
                raise TypeError("text")
        except (KeyError, IndexError, TypeError):
            raise ModelError(
                f"generation server [{self.url}] answered something that is not a completion "
                f"(keys {sorted(data) if isinstance(data, dict) else type(data).__name__})"
            ) from None
        cut = text.find(self.stop)  # servers that ignore `stop` still give the same text
        stopped = choice.get("finish_reason") == "stop" or cut >= 0
        text = text[:cut] if cut >= 0 else text
        lps, offsets = _logprobs(choice.get("logprobs"), len(text))
        return Generation(text, lps, offsets, stopped)


class _ModelMissing(ModelError):
    """The server does not know the adapter's name (404)."""


def _logprobs(block: Any, n_chars: int) -> tuple[list[float], list[int]]:
    """Token log-probabilities and offsets from the legacy completions ``logprobs`` block, if any.

    OpenAI counts ``text_offset`` from the start of the prompt, vLLM from the completion's: the first
    generated token starts the completion either way."""
    if not isinstance(block, dict):
        return [], []
    lps, offsets = block.get("token_logprobs"), block.get("text_offset")
    if not isinstance(lps, list) or not lps or not all(isinstance(x, int | float) for x in lps):
        return [], []
    if not isinstance(offsets, list) or len(offsets) != len(lps):
        return [], []
    first = offsets[0]
    return [float(x) for x in lps], [min(max(o - first, 0), n_chars) for o in offsets]


# --- choice by configuration ---------------------------------------------------------------------


def build_engine(cfg: LlamaConfig, model: Any, tokenizer: Any, folder: Path | None, version: str) -> Engine:
    """The engine ``cfg.engine`` names, for a model's weights (``model``, ``tokenizer``; the ``folder``
    it was loaded from, if any, and its ``version``) and settings."""
    if cfg.engine == "openai":
        assert cfg.engine_url is not None  # LlamaConfig refuses openai without a URL
        return _openai_for(cfg, folder, version)
    from recommender.extractors.llama.generation import TransformersEngine

    return TransformersEngine(
        model,
        tokenizer,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.predict_batch_size,
        stop=STOP,
        prefix_cache=cfg.prefix_cache,
        draft_tokens=cfg.draft_tokens,
        constrained=cfg.constrained,
    )


def _openai_for(cfg: LlamaConfig, folder: Path | None, version: str) -> OpenAIEngine:
    """The ``openai`` engine. Against vLLM (unless ``engine_model`` names what to call): the model
    folder's adapter, loaded there as the model's version; and the constraint on unless
    ``engine_structured_outputs`` is False. ModelError when the server cannot be reached (the engine
    is built again at the next call)."""
    from recommender.extractors.llama.layout import ADAPTER_DIR, MERGED_DIR

    assert cfg.engine_url is not None
    server = VllmServer(cfg.engine_url, timeout_s=cfg.engine_timeout_s)
    try:
        vllm_version = server.version()
    except ModelError:
        server.close()
        raise
    structured = cfg.engine_structured_outputs
    if structured is None:
        structured = vllm_version is not None
    if cfg.constrained and not structured:
        log.info("engine openai [%s]: decoding is unconstrained (not vLLM, or turned off)", cfg.engine_url)
    adapter: Path | None = None
    if (
        vllm_version is not None
        and cfg.engine_model is None
        and folder is not None
        and (folder / ADAPTER_DIR).is_dir()
        and not (folder / MERGED_DIR / "config.json").is_file()
    ):
        adapter = folder / ADAPTER_DIR
        check_lora_rank(adapter_rank(adapter))
    if adapter is None:
        server.close()
    return OpenAIEngine(
        cfg.engine_url,
        cfg.engine_model or version,
        max_new_tokens=cfg.max_new_tokens,
        stop=STOP,
        timeout_s=cfg.engine_timeout_s,
        retries=cfg.engine_retries,
        concurrency=cfg.engine_concurrency,
        structured=cfg.constrained and structured,
        adapter=adapter,
        server=server if adapter is not None else None,
    )


__all__ = ["OpenAIEngine", "build_engine"]
