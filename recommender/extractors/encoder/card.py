"""The model card written into every encoder model folder (MODEL_CARD.md)."""

from __future__ import annotations

from pathlib import Path

from recommender.extractors.base import ModelInfo
from recommender.extractors.card import CARD_FILE, metric_rows
from recommender.extractors.encoder.config import EncoderConfig
from recommender.extractors.encoder.model import LabelMaps

MODIFIER_CONTEXT = {
    True: ". It also reads each piece's entity tag (the given entities in RE mode, else the entity "
    "head's), which bounds modifiers by the entity they sit in (+1.8 RE points on dev)",
    False: "",
}
WINDOWS = {
    "sentences": "cut at sentence and line ends, balanced in length, so no piece is encoded twice; "
    "a sentence longer than half a window is cut inside, sharing {overlap} pieces of context",
    "fixed": "overlapping by {overlap}; each piece keeps the state of the window where it is furthest "
    "from an edge",
}


def render_card(info: ModelInfo, cfg: EncoderConfig, labels: LabelMaps, layers: int, hidden: int) -> str:
    """The card of a model with these ``info``, settings and ``labels``, on an encoder of ``layers``
    layers of size ``hidden``."""
    m = info.metrics
    return f"""# Kiwi encoder model `{info.version}`

Extractor `{info.extractor}`, schema {info.schema_version}, package {info.package_version},
created {info.created}.

## Architecture
One pass of a transformer encoder (`{cfg.base_model}`, {layers} layers,
hidden size {hidden}) over word-piece windows of at most {cfg.max_length}
pieces ({WINDOWS[cfg.window_cuts].format(overlap=cfg.window_overlap)}), so long notes lose no text.
On top of the shared states:
- an entity head: BIO tags over the 4 main types (problem, test, drug, treatment);
- a modifier head: BIO tags over the 16 modifier types, a separate layer because modifiers nest
  inside entities (a body location inside a problem){MODIFIER_CONTEXT[cfg.condition_modifiers]};
- a pair classifier: for every (entity, modifier) pair the schema allows ({len(labels.pairs)} pairs) within
  {cfg.max_pair_gap} word pieces, a small MLP over the mean-pooled states of both spans, their product,
  a pair-type embedding and a bucketed distance/side embedding. One negation can thus modify several
  problems. The candidate rule covers {m.get("candidate_pair_recall", "n/a")} of the gold training relations.

Tags are learnt and read on the first word piece of each word only (words as the tokenizer's
pre-tokenizer splits them, at whitespace and punctuation); the other pieces of a word follow it, so a
span never starts or ends inside a word (every MTSamples annotation is word-aligned, and piece-level
tags cut words such as "Sy|mptomatic"). Decoding takes, per note and head, the most probable tag
sequence in which I-X only follows B-X or I-X (Viterbi over the tag probabilities: 3 points of exact NER
F1 over per-word argmax). Span score: the mean softmax probability
of the span's tags; relation score: the sigmoid probability; both temperature-scaled on the
validation notes (temperatures {labels.temperatures}). The `uncertainty` of each predicted
note is 1 - the mean confidence of its decisions (spans kept, candidate pairs judged), for active learning.
Encoder arithmetic at inference: `{cfg.precision}` (auto = bfloat16 autocast where the CPU has native
bfloat16, which scores as fp32 at about half its time; else dynamic int8 quantization of the Linear
layers with one scale per output channel, which measured about a point of exact F1 lower).

Alternatives considered: entity-marker re-encoding per entity (the paper's RE set-up, one encoder
pass per entity: much slower on a CPU); a trained CRF layer (the constrained Viterbi decoding above
gets the well-formed spans without its training cost); a span-enumeration model (handles nesting in
one layer, quadratic in length); sentence-batched windows (needs a sentence splitter at ~60-90 ms per note).

## Training
AdamW, encoder learning rate {cfg.lr:g}, heads {cfg.head_lr:g}, weight decay {cfg.weight_decay:g},
linear warm-up over {cfg.warmup_ratio:g} of the steps then linear decay, batch {cfg.batch_size} windows,
at most {cfg.epochs} epochs, patience {cfg.patience}, seed {cfg.seed}. The paper's NER setting
(BiomedBERT-base on 1,413 notes) was learning rate 5e-5, weight decay 0.01; the offline default encoder
(6-layer MiniLM) on 80 notes learns too slowly at 5e-5 (dev score 0.16 after 2 epochs), so the defaults
use the higher rates measured best in `bench/README.md`.

## Data
{m.get("train_notes", "?")} training notes (fingerprint `{info.data_fingerprint}`), {m.get("dev_notes", "?")}
development notes (fingerprint `{m.get("dev_fingerprint", "")}`). Best epoch {m.get("best_epoch", "?")} of
at most {cfg.epochs}, early stopping on the mean of NER and RE exact F1 on {m.get("validation_notes", "?")}
validation notes (fingerprint `{m.get("validation_fingerprint", "")}`) carved from the training notes
(`splits.validation_split`); the development notes choose nothing.

## Metrics on the development split (project scorer, `recommender.evaluation`)
Exact match unless marked relaxed (overlap); 95% bootstrap interval over notes.

| task | precision | recall | F1 | F1 95% CI | relaxed F1 |
|---|---|---|---|---|---|
{metric_rows(m.get("dev", {}))}

## Intended use
Pre-annotation suggestions for human annotators (INCEpTION, Label Studio) in the Kiwi schema, and a
fast CPU baseline. Not for clinical decisions: every suggestion needs human review.

## Limits
Trained on a small corpus of English medical transcriptions; expect lower accuracy on other note
types, institutions and languages. Relations farther apart than {cfg.max_pair_gap} word pieces are never
predicted. Overlapping spans of the same layer (two entities over the same text) cannot be represented.
Scores are calibrated on the validation notes only.
"""


def write_card(
    folder: Path, info: ModelInfo, cfg: EncoderConfig, labels: LabelMaps, layers: int, hidden: int
) -> Path:
    path = Path(folder) / CARD_FILE
    path.write_text(render_card(info, cfg, labels, layers, hidden), encoding="utf-8")
    return path
