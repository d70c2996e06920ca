"""Generation engines beyond the in-process one, and the choice among them by configuration.

``transformers`` (:class:`~recommender.extractors.llama.generation.TransformersEngine`) decodes in
this process. ``openai`` sends each prompt to an OpenAI-compatible ``/v1/completions`` server
(``vllm serve --enable-lora``, ``transformers serve``, llama.cpp's server) for scale-out: greedy, the
same stop string and token cap, token log-probabilities where the server returns them (``logprobs``),
else none, so span scores are None rather than invented; the copy-or-tag constraint goes as vLLM's
``structured_outputs`` regex only when ``engine_structured_outputs`` says the server takes it.
``vllm`` runs vLLM in this process on a GPU (extra ``.[gpu]``): the LoRA adapter through vLLM's LoRA
support under a versioned name, automatic prefix caching for the shared instruction, and the
copy-or-tag constraint through vLLM's ``structured_outputs`` (its old ``guided_*`` fields are
ignored since 0.12).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from recommender.errors import ModelError
from recommender.extractors.llama.config import LlamaConfig
from recommender.extractors.llama.constrained import OPEN_TAG
from recommender.extractors.llama.generation import Engine, Generation, Prompt
from recommender.extractors.llama.task import STOP

if TYPE_CHECKING:
    from recommender.extractors.llama.extractor import LlamaExtractor

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class OpenAIEngine(Engine):
    """Greedy completions from an OpenAI-compatible server, ``concurrency`` requests at a time.

    A connection failure, a timeout or a 408/429/5xx answer is retried ``retries`` times with
    exponential backoff; then, or at once for any other error or an answer that is not a completion,
    one :class:`ModelError` names the URL and what went wrong (never the prompt: it is note text).
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
    ) -> None:
        self.url = url.rstrip("/") + "/v1/completions"
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

    def generate(
        self, prompts: Sequence[Prompt], *, between_steps: Callable[[], None] | None = None
    ) -> list[Generation]:
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
        if self.structured and prompt.source is not None:
            body["structured_outputs"] = {"regex": copy_or_tag_regex(prompt.source, prompt.labels, self.stop)}
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
                if last or r.status_code not in RETRY_STATUS:
                    raise ModelError(f"generation server [{self.url}] answered {r.status_code}: {_reason(r)}")
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


def _reason(r: httpx.Response) -> str:
    """The server's one-line reason (its JSON error message, else the start of the body)."""
    try:
        data = r.json()
        message = data.get("error", data.get("detail", data)) if isinstance(data, dict) else data
        if isinstance(message, dict):
            message = message.get("message", message)
    except ValueError:
        message = r.text
    return " ".join(str(message).split())[:200]


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


# --- vLLM (GPU) --------------------------------------------------------------------------------


def copy_or_tag_regex(source: str, labels: Sequence[str], stop: str = STOP) -> str:
    """A regular expression for the copy-or-tag outputs of ``source`` (vLLM ``structured_outputs``).

    Looser than :class:`~recommender.extractors.llama.constrained.CopyOrTag` (tags are not checked
    for balance, which a regular language cannot do at any depth): the words are copied in order,
    with up to three tags opening before and closing after each; ``task.read_output`` drops
    unbalanced tags as it does for the transformers engine."""
    tag = "|".join(re.escape(OPEN_TAG.format(label)) for label in dict.fromkeys(labels))
    opening = f"(?:{tag}){{0,3}}" if tag else ""
    closing = "(?:</span>){0,3}" if tag else ""
    words = [f"{opening}{re.escape(w)}{closing}" for w in source.split(" ") if w]
    return " " + " ".join(words) + " " + re.escape(stop)


class VllmEngine(Engine):
    """Greedy decoding in vLLM with the adapter as a LoRA and automatic prefix caching.

    :meth:`load_adapter` registers a retrained adapter under a new name and id and removes the old
    one: reusing a name for new weights can serve stale prefix-cache blocks."""

    def __init__(
        self,
        base: str,
        tokenizer: str | None,
        adapter: Path | None,
        version: str,
        *,
        max_new_tokens: int = 512,
        stop: str = STOP,
        constrained: bool = True,
        max_lora_rank: int = 16,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
    ) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise ModelError(
                "the vllm engine needs vLLM on a CUDA GPU: pip install 'kiwi-recommender[gpu]'"
            ) from None
        self.max_new_tokens = max_new_tokens
        self.stop = stop
        self.constrained = constrained
        self.llm = LLM(
            model=base,
            tokenizer=tokenizer,
            enable_lora=adapter is not None,
            max_lora_rank=max_lora_rank,
            enable_prefix_caching=True,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        self._lock = threading.Lock()
        self._lora: Any = None
        self._next_id = 1
        if adapter is not None:
            self.load_adapter(adapter, version)

    @property
    def adapter_name(self) -> str | None:
        return None if self._lora is None else self._lora.lora_name

    def load_adapter(self, folder: Path, version: str) -> str:
        """Serve the adapter in ``folder`` from now on, named ``<version>-<n>``; returns the name."""
        from vllm.lora.request import LoRARequest

        with self._lock:
            old = self._lora
            self._lora = LoRARequest(f"{version}-{self._next_id}", self._next_id, str(folder))
            self._next_id += 1
            if old is not None:
                self.llm.llm_engine.remove_lora(old.lora_int_id)
            return self._lora.lora_name

    def sampling_params(self, prompt: Prompt) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if self.constrained and prompt.source is not None:
            structured = StructuredOutputsParams(regex=copy_or_tag_regex(prompt.source, prompt.labels))
        return SamplingParams(
            temperature=0.0,
            max_tokens=self.max_new_tokens,
            stop=[self.stop],
            include_stop_str_in_output=False,
            logprobs=0,
            structured_outputs=structured,
        )

    def generate(
        self, prompts: Sequence[Prompt], *, between_steps: Callable[[], None] | None = None
    ) -> list[Generation]:
        if not prompts:
            return []
        with self._lock:
            lora = self._lora
        outputs = self.llm.generate(
            [p.prefix + p.text for p in prompts],
            [self.sampling_params(p) for p in prompts],
            lora_request=lora,
            use_tqdm=False,
        )
        return [_vllm_generation(out.outputs[0], self.stop) for out in outputs]


def _vllm_generation(completion: Any, stop: str) -> Generation:
    text = completion.text
    cut = text.find(stop)
    text = text[:cut] if cut >= 0 else text
    lps: list[float] = []
    offsets: list[int] = []
    if completion.logprobs:
        at = 0
        for token, chosen in zip(completion.token_ids, completion.logprobs, strict=False):
            entry = chosen[token]
            offsets.append(min(at, len(text)))
            lps.append(float(entry.logprob))
            at += len(entry.decoded_token or "")
    return Generation(text, lps, offsets, completion.finish_reason == "stop" or cut >= 0)


# --- choice by configuration ---------------------------------------------------------------------


def build_engine(extractor: LlamaExtractor) -> Engine:
    """The engine ``extractor.config.engine`` names, for this model's weights and settings."""
    cfg: LlamaConfig = extractor.config
    if cfg.engine == "openai":
        assert cfg.engine_url is not None  # LlamaConfig refuses openai without a URL
        if cfg.constrained and not cfg.engine_structured_outputs:
            log.info(
                "engine openai [%s]: decoding is unconstrained (engine_structured_outputs off)",
                cfg.engine_url,
            )
        return OpenAIEngine(
            cfg.engine_url,
            cfg.engine_model or extractor.version,
            max_new_tokens=cfg.max_new_tokens,
            stop=STOP,
            timeout_s=cfg.engine_timeout_s,
            retries=cfg.engine_retries,
            concurrency=cfg.engine_concurrency,
            structured=cfg.constrained and cfg.engine_structured_outputs,
        )
    if cfg.engine == "vllm":
        return _vllm_for(extractor)
    from recommender.extractors.llama.generation import TransformersEngine

    return TransformersEngine(
        extractor.model,
        extractor.tokenizer,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.predict_batch_size,
        stop=STOP,
        prefix_cache=cfg.prefix_cache,
        draft_tokens=cfg.draft_tokens,
        constrained=cfg.constrained,
    )


def _vllm_for(extractor: LlamaExtractor) -> VllmEngine:
    """vLLM over the merged weights when the folder has them, else the base plus the adapter."""
    from recommender.extractors.llama.base_model import CACHE_DIR, pretrained_path, resolve
    from recommender.extractors.llama.layout import ADAPTER_DIR, MERGED_DIR, TOKENIZER_DIR

    cfg = extractor.config
    folder = extractor.folder
    if folder is None:
        raise ModelError("the vllm engine serves a saved model folder; save the model first")
    common = {"max_new_tokens": cfg.max_new_tokens, "constrained": cfg.constrained}
    dtype = {"bf16": "bfloat16", "fp32": "float32"}.get(cfg.dtype, "auto")
    if (folder / MERGED_DIR / "config.json").is_file():
        return VllmEngine(str(folder / MERGED_DIR), None, None, extractor.version, dtype=dtype, **common)
    if extractor.base is None:
        raise ModelError("kiwi_model.json names no base model for the adapter", source=folder)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else folder.resolve().parent / CACHE_DIR
    base = pretrained_path(resolve(extractor.base.name), cache)
    return VllmEngine(
        base,
        str(folder / TOKENIZER_DIR),
        folder / ADAPTER_DIR,
        extractor.version,
        max_lora_rank=cfg.lora_r,
        dtype=dtype,
        **common,
    )


__all__ = ["OpenAIEngine", "VllmEngine", "build_engine", "copy_or_tag_regex"]
