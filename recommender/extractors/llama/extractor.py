"""``kiwi.llama.v1``: Kiwi's instruction-tuned LLaMA extractor (an instruct model plus a LoRA adapter).

Prediction follows the released Kiwi scripts: one NER prompt per sentence of every note (one engine
call for all of them), then one RE prompt per main entity found (or given, in the paper's RE mode),
in a second call. Every generation is read back by ``task.read_output``: spans are aligned to the
note, what cannot be placed is dropped and counted by kind in ``Document.drops``. A span's score is
the geometric mean probability of its generated tokens (tags and text); a relation's score is its
modifier's in the RE generation; ``Document.uncertainty`` is 1 - the mean probability of all tokens
generated for the note.

A model folder holds the adapter (``adapter/``), the tokenizer, the prompt templates it was trained
with (``prompts/``), ``kiwi_model.json`` (typed config, base model identity and checksum, data
fingerprint, dev metrics) and MODEL_CARD.md; ``merged/`` (optional) holds full merged weights, which
load without the base model.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from recommender.document import Document
from recommender.errors import ModelError
from recommender.extractors import register
from recommender.extractors.base import (
    BaseModelRef,
    Extractor,
    ModelInfo,
    least_confidence,
)
from recommender.extractors.llama.card import write_card
from recommender.extractors.llama.config import LlamaConfig
from recommender.extractors.llama.layout import ADAPTER_DIR, MERGED_DIR, NAME, TOKENIZER_DIR
from recommender.extractors.llama.task import (
    PROMPTS_DIR,
    UNFINISHED_OUTPUT,
    UNWRAPPABLE_ENTITY,
    Templates,
    Unit,
    ner_units,
    re_units,
    read_output,
    span_score,
)
from recommender.markup_language import segmented
from recommender.schema import load_schema

log = logging.getLogger(__name__)

SELF_MODIFIER = "entity tagged as its own modifier"  # an RE output marking the main entity itself

AUDIT_KEY = "llama_prompts"  # Document.meta key of the raw prompts and generations (keep_prompts only)


def trained_on(info: ModelInfo) -> str:
    """The base weights a model's adapter learnt against (its training's ``quantization`` as used):
    the weights it is served on. A folder that does not say (saved before this was read) is served on
    the 16-bit base, as it always was."""
    return str(info.metrics.get("quantization", "none"))


@dataclass(frozen=True)
class ModelFolder:
    """What a model folder says before any weights are read."""

    info: ModelInfo
    config: LlamaConfig
    templates: Templates
    base: BaseModelRef | None


def _score(span: Any, gen: Any) -> float | None:
    """The span's score, or None when the engine's server gave no log-probabilities."""
    if not gen.token_logprobs:
        return None
    return round(span_score(span, gen.token_logprobs, gen.token_offsets), 4)


@register(NAME)
class LlamaExtractor(Extractor):
    config_class = LlamaConfig
    trainer = "recommender.extractors.llama.training:train_llama"
    ahead = True

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: LlamaConfig,
        templates: Templates,
        info: ModelInfo,
        base: BaseModelRef | None,
        adapter_dir: Path | None = None,
    ) -> None:
        self.model = model  # a peft model while training; merged weights once loaded
        self.tokenizer = tokenizer
        self.config = config
        self.templates = templates
        self.info = info
        self.base = base
        self.schema = load_schema()
        self._adapter_dir = adapter_dir  # where a loaded model's adapter files are (to save a copy)
        self._engine: Any = None
        self._lock = threading.Lock()

    # --- inference -----------------------------------------------------------------------------
    def invalidate(self) -> None:
        """Forget the engine (and its prefix caches) after the weights changed (training)."""
        with self._lock:
            self._engine = None

    def engine(self) -> Any:
        """The generation engine the config names, built on first use."""
        if self._engine is None:
            from recommender.extractors.llama.engines import build_engine

            self._engine = build_engine(self.config, self.model, self.tokenizer, self.folder, self.version)
        return self._engine

    def configure(self, **values: Any) -> None:
        """Override config fields of a loaded model (the service's engine settings), checked."""
        with self._lock:
            self.config = replace(self.config, **values)
            self._engine = None

    def activate(self) -> None:
        """Behind a vLLM server: load this version's adapter there before the service answers with it."""
        if self.config.engine != "openai":
            return
        try:
            with self._lock:
                engine = self.engine()
            engine.load_adapter()
        except ModelError as e:  # the first prediction tries again; until then the fallback answers
            log.warning("model [%s] is not ready on its server yet: %s", self.version, e)

    def retire(self) -> None:
        """Behind a vLLM server: unload this version's adapter (a newer one answers now)."""
        engine = self._engine
        if engine is not None and hasattr(engine, "retire"):
            engine.retire()

    @property
    def folder(self) -> Path | None:
        """The model folder this extractor was loaded from (None before it is saved)."""
        return self._adapter_dir.parent if self._adapter_dir is not None else None

    def _generate(self, units: Sequence[Unit], between_steps: Callable[[], None] | None) -> list[Any]:
        from recommender.extractors.llama.generation import Prompt

        prompts = []
        for u in units:
            prefix, text = self.templates.split(u.kind, u.input)
            prompts.append(Prompt(prefix, text, u.language if self.config.constrained else None))
        if not prompts:
            return []
        with self._lock:  # one generation at a time: the engine's caches are not thread-safe
            return list(self.engine().generate(prompts, between_steps=between_steps))

    def predict(self, docs: Sequence[Document], *, entities_given: bool = False) -> list[Document]:
        return self._predict(docs, entities_given, None)

    def predict_in_background(
        self,
        docs: Sequence[Document],
        *,
        entities_given: bool = False,
        between_steps: Callable[[], None] | None = None,
    ) -> list[Document]:
        return self._predict(docs, entities_given, between_steps)

    def _predict(
        self, docs: Sequence[Document], entities_given: bool, between_steps: Callable[[], None] | None
    ) -> list[Document]:
        segs = [segmented(d) for d in docs]
        outs = [
            Document(
                id=d.id,
                text=d.text,
                sentences=list(s.sentences),
                tokens=list(s.tokens),
                meta=copy.deepcopy(d.meta),
            )
            for d, s in zip(docs, segs, strict=True)
        ]
        drops = [Counter[str]() for _ in docs]
        probs: list[list[float]] = [[] for _ in docs]
        audit: list[list[dict[str, str]]] = [[] for _ in docs]
        source = self.version

        def record(unit: Unit, gen: Any) -> None:
            probs[unit.doc].extend(math.exp(lp) for lp in gen.token_logprobs)
            if not gen.stopped:
                drops[unit.doc][UNFINISHED_OUTPUT] += 1
            if self.config.keep_prompts:
                prompt = unit.prompt(self.templates)
                audit[unit.doc].append({"kind": unit.kind, "prompt": prompt, "output": gen.text})

        if entities_given:
            for d, out in zip(docs, outs, strict=True):
                out.spans = [replace(s) for s in d.spans if self.schema.is_entity(s.label)]
        else:
            units = ner_units(segs, self.schema)
            for unit, gen in zip(units, self._generate(units, between_steps), strict=True):
                record(unit, gen)
                read = read_output(unit, segs[unit.doc], gen.text)
                drops[unit.doc] += read.drops
                out = outs[unit.doc]
                for s in read.spans:
                    score = _score(s, gen)
                    out.add_span(s.label, s.begin, s.end, score=score, source=source)

        rel_units: list[Unit] = []
        for i, out in enumerate(outs):
            found, lost = re_units(i, segs[i], out.entities(self.schema), self.schema)
            rel_units += found
            if lost:
                drops[i][UNWRAPPABLE_ENTITY] += lost
        for unit, gen in zip(rel_units, self._generate(rel_units, between_steps), strict=True):
            record(unit, gen)
            read = read_output(unit, segs[unit.doc], gen.text)
            drops[unit.doc] += read.drops
            out = outs[unit.doc]
            assert unit.entity is not None
            for s in read.spans:
                if s.begin == unit.entity.begin and s.end == unit.entity.end:
                    drops[unit.doc][SELF_MODIFIER] += 1
                    continue
                score = _score(s, gen)
                # one modifier (a negation) may modify several entities: one span, several relations
                mod = next((m for m in out.spans if m.key == (s.label, s.begin, s.end)), None)
                if mod is None:
                    mod = out.add_span(s.label, s.begin, s.end, score=score, source=source)
                elif mod.score is not None and score is not None and score > mod.score:
                    mod.score = score
                out.add_relation(unit.entity, mod, score=score, source=source)

        for i, out in enumerate(outs):
            out.uncertainty = least_confidence(probs[i])
            out.drops = dict(sorted(drops[i].items()))
            if self.config.keep_prompts:
                out.meta[AUDIT_KEY] = audit[i]
            out.sort()
        return outs

    # --- persistence ---------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        adapter = folder / ADAPTER_DIR
        if hasattr(self.model, "peft_config"):
            if self.base is not None:  # record the base by name, not the cache folder it loaded from
                for peft_config in self.model.peft_config.values():
                    peft_config.base_model_name_or_path = self.base.name
            self.model.save_pretrained(adapter)
        elif self._adapter_dir is not None and self._adapter_dir.resolve() != adapter.resolve():
            shutil.copytree(self._adapter_dir, adapter, dirs_exist_ok=True)
        self.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
        self.templates.save(folder)
        self.info.config = self.config.to_dict()
        self.info.base_model = self.base.to_dict() if self.base is not None else None
        self.info.save(folder)
        write_card(folder, self.info, self.config, self.base, self.templates.version)

    def save_merged(self, folder: Path, cache_dir: Path) -> Path:
        """Write the adapter merged into full-precision base weights (``merged/``, safetensors)."""
        from peft import PeftModel

        from recommender.extractors.llama.base_model import load_base_for, resolve_dtype

        if self.base is None:
            raise ModelError("a merged model needs the base model it was trained on", source=folder)
        base, tokenizer = load_base_for(
            self.base, cache_dir, dtype=resolve_dtype(self.config.dtype), trained_on=trained_on(self.info)
        )
        merged = PeftModel.from_pretrained(base, str(Path(folder) / ADAPTER_DIR)).merge_and_unload()
        out = Path(folder) / MERGED_DIR
        merged.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return out

    @staticmethod
    def read_folder(folder: Path) -> ModelFolder:
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError("no such model folder", source=folder)
        info = ModelInfo.load(folder)
        if info.extractor != NAME:
            raise ModelError(f"model folder is for extractor [{info.extractor}], not [{NAME}]", source=folder)
        config = LlamaConfig.from_dict(info.config)
        prompts = folder / PROMPTS_DIR
        versions = sorted(p.name for p in prompts.iterdir() if p.is_dir()) if prompts.is_dir() else []
        if len(versions) != 1:
            raise ModelError(
                f"expected one prompt template version in [{PROMPTS_DIR}], found {versions}", source=folder
            )
        if info.schema_version != load_schema().version:
            log.warning("model %s was trained on schema %s", info.version, info.schema_version)
        return ModelFolder(info, config, Templates.read(prompts, versions[0]), info.base)

    @classmethod
    def load(cls, folder: Path) -> LlamaExtractor:
        from recommender.extractors.llama.base_model import (
            base_cache,
            load_base_for,
            load_tokenizer,
            resolve_dtype,
        )

        folder = Path(folder)
        meta = cls.read_folder(folder)
        config = meta.config
        dtype = resolve_dtype(config.dtype)
        merged = folder / MERGED_DIR
        try:
            if (merged / "config.json").is_file():
                from transformers import AutoModelForCausalLM

                model = AutoModelForCausalLM.from_pretrained(merged, dtype=dtype)
            else:
                from peft import PeftModel

                for part in (ADAPTER_DIR, TOKENIZER_DIR):
                    if not (folder / part).exists():
                        raise ModelError(f"incomplete model folder: [{part}] is missing", source=folder)
                if meta.base is None:
                    raise ModelError("kiwi_model.json names no base model for the adapter", source=folder)
                cache_dir = base_cache(folder, config.cache_dir)
                base, _ = load_base_for(meta.base, cache_dir, dtype=dtype, trained_on=trained_on(meta.info))
                # merged once for inference: the LoRA matmuls would double the cost of every layer
                model = PeftModel.from_pretrained(base, str(folder / ADAPTER_DIR)).merge_and_unload()
            tokenizer = load_tokenizer(folder / TOKENIZER_DIR)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelError(
                f"cannot load the model ({type(e).__name__}: {str(e)[:200]})", source=folder
            ) from None
        model.eval()
        return cls(model, tokenizer, config, meta.templates, meta.info, meta.base, folder / ADAPTER_DIR)
