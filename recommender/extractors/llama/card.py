"""The model card written into every LLaMA model folder (MODEL_CARD.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recommender.extractors.base import BaseModelRef, ModelInfo
from recommender.extractors.card import CARD_FILE, metric_rows
from recommender.extractors.llama.config import LlamaConfig


def _per_type(dev: dict[str, Any]) -> str:
    types = dev.get("ner", {}).get("exact", {}).get("per_type", {})
    if not types:
        return ""
    rows = "\n".join(f"| {t} | {s['f1']:.3f} |" for t, s in types.items())
    return f"\nNER exact F1 per type:\n\n| type | F1 |\n|---|---|\n{rows}\n"


def render_card(info: ModelInfo, cfg: LlamaConfig, base_ref: BaseModelRef | None, prompts: str) -> str:
    """The card of a model with these ``info`` and settings, on ``base_ref``, with prompt templates of
    version ``prompts``."""
    m = info.metrics
    base = base_ref.to_dict() if base_ref is not None else {"name": cfg.base, "sha256": "?"}
    drops = m.get("dev", {}).get("drops", {})
    drop_text = ", ".join(f"{k}: {v}" for k, v in drops.items()) or "none"
    quant = m.get("quantization", cfg.quantization)
    return f"""# Kiwi LLaMA model `{info.version}`

Extractor `{info.extractor}`, schema {info.schema_version}, package {info.package_version},
created {info.created}.

## Model
A LoRA adapter (rank {cfg.lora_r}, alpha {cfg.lora_alpha}, dropout {cfg.lora_dropout:g}, every linear
layer) on the instruct model `{base["name"]}` (weights sha256 `{base["sha256"][:16]}`; loading refuses
other weights). Trained on {
        "4-bit NF4 base weights (QLoRA, bitsandbytes)"
        if quant == "nf4"
        else "16/32-bit base weights (plain LoRA)"
    }; at inference the adapter is merged into {cfg.dtype} weights.

## Task
Kiwi's instruction format (prompt templates `{prompts}`, copied into `prompts/`): one NER
prompt per sentence (the sentence's tokens joined by single spaces; the output wraps each main entity
in `<span class="TYPE">`), then one RE prompt per main entity (the input wraps that entity; the output
wraps its modifiers). Greedy decoding, at most {cfg.max_new_tokens} new tokens, stop at `<EOS>`;
{
        "copy-or-tag constrained decoding (the output is always the input with tags inserted)"
        if cfg.constrained
        else "free generation"
    }. Every output is aligned back to the note; what cannot be placed is dropped and
counted by kind (development split: {drop_text}). Span score: the geometric mean probability of the
span's generated tokens; relation score: its modifier's in the RE output; note uncertainty: 1 - the
mean probability of the note's generated tokens.

## Training
{m.get("train_examples", "?")} NER and RE examples mixed and shuffled (seed {cfg.seed}; {
        m.get("examples_too_long", 0)
    }
longer than {cfg.max_length} tokens left out), loss on the target tokens only. AdamW (32-bit state),
learning rate {cfg.lr:g}, cosine schedule after {cfg.warmup_ratio:g} warm-up, max grad norm
{cfg.max_grad_norm:g}, batch {cfg.batch_size} x accumulation {cfg.grad_accum}, at most {cfg.epochs} epochs
(cap: {cfg.max_steps or "none"} steps, {cfg.max_examples or "all"} examples{
        "" if cfg.ner_fraction is None else f", {cfg.ner_fraction:.0%} of them NER"
    }). {m.get("steps", "?")} optimizer
steps run, the adapter of step {m.get("best_step", "?")} kept (best mean of NER and RE exact F1 on the
{m.get("validation_notes", "?")} validation notes carved from the training notes, `splits.validation_split`;
the development notes choose nothing). The paper's settings, except paged AdamW (a CUDA feature).
Training took {m.get("train_seconds", "?")} s ({m.get("train_cpu_seconds", "?")} CPU-seconds, peak memory
{m.get("train_peak_rss_mb", "?")} MB, over every session of a resumed run).

## Data
{m.get("train_notes", "?")} training notes (fingerprint `{info.data_fingerprint}`), {m.get("dev_notes", "?")}
development notes (fingerprint `{m.get("dev_fingerprint", "")}`).

## Metrics on the development split (project scorer, `recommender.evaluation`)
Exact match unless marked relaxed (overlap); 95% bootstrap interval over notes.

| task | precision | recall | F1 | F1 95% CI | relaxed F1 |
|---|---|---|---|---|---|
{metric_rows(m.get("dev", {}))}
{_per_type(m.get("dev", {}))}
## Intended use
Pre-annotation suggestions for human annotators (INCEpTION, Label Studio) in the Kiwi schema. Not for
clinical decisions: every suggestion needs human review.

## Limits
A small instruct model tuned on few English medical transcriptions: expect errors, more so on other
note types and institutions. Sentences are split by PyRuSH, not spaCy as in the Kiwi scripts, so
sentence boundaries can differ from Kiwi's. Raw prompts and outputs are kept only with
`keep_prompts` (they hold note text, which is PHI).
"""


def write_card(
    folder: Path, info: ModelInfo, cfg: LlamaConfig, base_ref: BaseModelRef | None, prompts: str
) -> Path:
    path = Path(folder) / CARD_FILE
    path.write_text(render_card(info, cfg, base_ref, prompts), encoding="utf-8")
    return path
