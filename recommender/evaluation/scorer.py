"""Precision, recall and F1 of predicted documents against gold documents, as the paper scores them.

Three tasks, each exact and relaxed (see ``matching``), micro-averaged and per type:

- ``ner``: the 4 main entity types;
- ``re``: ``hasAttr`` relations, typed by their pair (``problem-negation``...). A predicted relation
  counts when its head entity span, its modifier span and both types match the gold relation (relaxed:
  both ends overlap). In the paper's protocol the predictions were made with the gold main entities
  given (``kiwi evaluate --model`` does that), but the matching is the same either way;
- ``spans``: all 20 span types (entities and modifiers) end to end.

Relation pair types outside the schema's 21 that occur in the data are scored too, after the schema's
types; spans whose labels are not in the schema cannot be entities or modifiers and are left out.
Every figure comes with a bootstrap interval over documents (``stats``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from recommender.document import Document, total_drops
from recommender.errors import ConfigError, DocumentError
from recommender.evaluation.matching import (
    MODES,
    Mention,
    Mode,
    align,
    relation_mentions,
    relation_type,
    span_mentions,
)
from recommender.evaluation.stats import LEVEL, RESAMPLES, SEED, bootstrap_f1, interval, resample_weights
from recommender.progress import Progress
from recommender.schema import Schema, load_schema

TASKS = ("ner", "re", "spans")


@dataclass(frozen=True)
class Score:
    tp: int
    fp: int
    fn: int
    ci_f1: tuple[float, float]

    # Same zero-division rule as stats.prf, in plain Python: these are read thousands of times.
    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "ci": {"f1": list(self.ci_f1)},
        }


@dataclass(frozen=True)
class TaskScore:
    exact: Score
    relaxed: Score
    per_type: dict[str, dict[Mode, Score]]

    def mode(self, mode: Mode) -> Score:
        return self.exact if mode == "exact" else self.relaxed

    def to_dict(self) -> dict[str, Any]:
        return {
            "exact": self.exact.to_dict(),
            "relaxed": self.relaxed.to_dict(),
            "per_type": {t: {m: s.to_dict() for m, s in modes.items()} for t, modes in self.per_type.items()},
        }


@dataclass(frozen=True)
class TaskCounts:
    """Per-document, per-type counts of one task: ``counts[mode]`` has shape (3, documents, types)
    holding tp, fp and fn. Kept so that scores, intervals and comparisons need no re-matching."""

    doc_ids: tuple[str, ...]
    types: tuple[str, ...]
    counts: dict[Mode, NDArray[np.int64]]

    def micro(self, mode: Mode) -> tuple[NDArray, NDArray, NDArray]:
        """Per-document (tp, fp, fn) summed over types."""
        tp, fp, fn = self.counts[mode].sum(axis=2)
        return tp, fp, fn

    def score(self, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> TaskScore:
        weights = resample_weights(len(self.doc_ids), resamples, seed)
        micro: dict[Mode, Score] = {}
        per_type: dict[str, dict[Mode, Score]] = {t: {} for t in self.types}
        for mode in MODES:
            tp, fp, fn = self.micro(mode)
            ci = interval(bootstrap_f1(tp, fp, fn, weights), level)
            micro[mode] = Score(int(tp.sum()), int(fp.sum()), int(fn.sum()), ci)  # type: ignore[arg-type]
            ttp, tfp, tfn = self.counts[mode]
            cis = interval(bootstrap_f1(ttp, tfp, tfn, weights), level) if self.types else []
            for k, t in enumerate(self.types):
                per_type[t][mode] = Score(
                    int(ttp[:, k].sum()),
                    int(tfp[:, k].sum()),
                    int(tfn[:, k].sum()),
                    cis[k],  # type: ignore[index]
                )
        return TaskScore(micro["exact"], micro["relaxed"], per_type)


@dataclass(frozen=True)
class Evaluation:
    ner: TaskScore
    re: TaskScore
    spans: TaskScore
    documents: int
    speed: dict[str, float] | None = field(default=None)
    drops: dict[str, int] = field(default_factory=dict)  # model output that could not be placed, by kind

    def task(self, name: str) -> TaskScore:
        return {"ner": self.ner, "re": self.re, "spans": self.spans}[name]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {t: self.task(t).to_dict() for t in TASKS}
        out["documents"] = self.documents
        if self.speed is not None:
            out["speed"] = dict(self.speed)
        out["drops"] = dict(self.drops)
        return out


def pair_documents(gold: Sequence[Document], pred: Sequence[Document]) -> list[tuple[Document, Document]]:
    """Gold and predicted documents paired by id, in gold order.

    Raises:
        DocumentError: duplicate ids, ids present on one side only, or different texts for one id.
    """
    gold_ids = _unique_ids(gold, "gold")
    pred_by_id = dict(zip(_unique_ids(pred, "predicted"), pred, strict=True))
    missing = [i for i in gold_ids if i not in pred_by_id]
    extra = sorted(set(pred_by_id) - set(gold_ids))
    if missing:
        raise DocumentError(f"no predictions for gold documents [{', '.join(missing)}]")
    if extra:
        raise DocumentError(f"predictions for documents not in gold [{', '.join(extra)}]")
    pairs = [(g, pred_by_id[g.id]) for g in gold]
    for g, p in pairs:
        if g.text != p.text:
            raise DocumentError(f"gold and predicted texts differ in document [{g.id}]; offsets cannot match")
    return pairs


def count_task(
    pairs: Sequence[tuple[Document, Document]],
    mentions: Callable[[Document], list[Mention]],
    known_types: Sequence[str],
) -> TaskCounts:
    """Match the mentions of every (gold, predicted) pair and tally tp/fp/fn per document and type."""
    aligned: list[tuple[list[Mention], list[Mention], dict[Mode, Any]]] = []
    seen: set[str] = set()
    for g, p in pairs:
        gm, pm = mentions(g), mentions(p)
        seen.update(m.label for m in gm)
        seen.update(m.label for m in pm)
        aligned.append((gm, pm, {mode: align(gm, pm, mode) for mode in MODES}))
    types = tuple(known_types) + tuple(sorted(seen - set(known_types)))
    column = {t: k for k, t in enumerate(types)}
    counts: dict[Mode, NDArray[np.int64]] = {}
    for mode in MODES:
        c = np.zeros((3, len(pairs), len(types)), dtype=np.int64)
        for d, (gm, pm, alignments) in enumerate(aligned):
            a = alignments[mode]
            for i, _ in a.pairs:
                c[0, d, column[gm[i].label]] += 1
            for j in a.spurious:
                c[1, d, column[pm[j].label]] += 1
            for i in a.missed:
                c[2, d, column[gm[i].label]] += 1
        counts[mode] = c
    return TaskCounts(tuple(g.id for g, _ in pairs), types, counts)


def count(
    gold: Sequence[Document],
    pred: Sequence[Document],
    *,
    re_pred: Sequence[Document] | None = None,
    schema: Schema | None = None,
) -> dict[str, TaskCounts]:
    """Per-document counts of the three tasks. ``re_pred`` (predictions made with the gold main
    entities given) is scored for RE instead of ``pred`` when supplied."""
    schema = schema or load_schema()
    pairs = pair_documents(gold, pred)
    re_pairs = pair_documents(gold, re_pred) if re_pred is not None else pairs
    return {
        "ner": count_task(pairs, lambda d: span_mentions(d, schema.entity_names), schema.entity_names),
        "re": count_task(re_pairs, relation_mentions, [relation_type(h, t) for h, t in schema.pairs]),
        "spans": count_task(pairs, lambda d: span_mentions(d, schema.label_names), schema.label_names),
    }


def evaluate(
    gold: Sequence[Document],
    pred: Sequence[Document],
    *,
    re_pred: Sequence[Document] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
    speed: dict[str, float] | None = None,
    schema: Schema | None = None,
) -> Evaluation:
    """Score ``pred`` against ``gold`` (documents paired by id) on NER, RE and all spans."""
    tasks = count(gold, pred, re_pred=re_pred, schema=schema)
    scores = {name: c.score(resamples, seed, level) for name, c in tasks.items()}
    drops = total_drops([*pred, *(re_pred or [])])
    return Evaluation(scores["ner"], scores["re"], scores["spans"], len(gold), speed, drops)


def _unique_ids(docs: Sequence[Document], side: str) -> list[str]:
    ids = [d.id for d in docs]
    dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dupes:
        raise DocumentError(f"duplicate {side} document ids [{', '.join(dupes)}]")
    return ids


class Predicts(Protocol):
    """What the scorer needs of a model: ``Extractor.predict`` (the scorer sits below the extractors)."""

    def predict(self, docs: Sequence[Document], *, entities_given: bool = False) -> list[Document]: ...


def entities_only(doc: Document, schema: Schema | None = None) -> Document:
    """A copy of ``doc`` keeping only its main entity spans: the input of the paper's RE setting."""
    schema = schema or load_schema()
    return replace(
        doc,
        spans=[replace(s) for s in doc.spans if schema.is_entity(s.label)],
        relations=[],
        meta=dict(doc.meta),
    )


def predict_for_scoring(
    extractor: Predicts,
    gold: Sequence[Document],
    *,
    batch_size: int = 8,
    track: Progress[Any] | None = None,
) -> tuple[list[Document], list[Document], dict[str, float]]:
    """The paper's two prediction passes over ``gold``'s notes: from raw text (NER, spans) and with the
    gold main entities given (RE); with the wall-clock seconds per note of both."""
    if batch_size < 1:
        raise ConfigError(f"the batch size must be positive, not [{batch_size}]")
    schema = load_schema()

    def run(docs: list[Document], description: str, entities_given: bool) -> tuple[list[Document], float]:
        batches = [docs[i : i + batch_size] for i in range(0, len(docs), batch_size)]
        wrapped = track(batches, description, len(batches)) if track else batches
        out: list[Document] = []
        start = time.perf_counter()
        for batch in wrapped:
            out.extend(extractor.predict(batch, entities_given=entities_given))
        return out, time.perf_counter() - start

    pred, seconds = run([d.without_annotations() for d in gold], "predicting from text", False)
    re_pred, re_seconds = run([entities_only(d, schema) for d in gold], "predicting modifiers", True)
    n = max(len(gold), 1)
    speed = {
        "seconds_per_note": seconds / n,
        "seconds": seconds,
        "re_seconds_per_note": re_seconds / n,
        "batch_size": float(batch_size),
    }
    return pred, re_pred, speed


def evaluate_extractor(
    extractor: Predicts,
    gold: Sequence[Document],
    *,
    batch_size: int = 8,
    track: Progress[Any] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Evaluation:
    """Predict ``gold``'s notes with ``extractor`` (see :func:`predict_for_scoring`) and score them.

    NER and spans are scored on predictions from raw text; RE on a second pass where the extractor
    is given the gold main entities (``entities_given=True``), as in the paper. ``speed`` holds the
    wall-clock seconds per note of both passes. ``track(batches, description, total)`` may wrap the
    batches in a progress bar.
    """
    schema = load_schema()
    pred, re_pred, speed = predict_for_scoring(extractor, gold, batch_size=batch_size, track=track)
    return evaluate(
        gold, pred, re_pred=re_pred, resamples=resamples, seed=seed, level=level, speed=speed, schema=schema
    )
