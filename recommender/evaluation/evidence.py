"""What the corrections say about each model version: the scored notes summed up.

Input: the score rows of ``correction_scores.score_correction`` (one per corrected note, annotator and kind
of suggestion). Each (note, annotator) counts once per model version, at its newest correction. Per
model version (and per project, per label, per UTC day): the notes behind the figures, the share of
suggested spans accepted unchanged, exact and relaxed F1 of the suggestions against the corrections
(NER, RE, all spans), and the edits per note, each with a bootstrap interval over notes (the
scorer's resampling).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from recommender.evaluation.correction_scores import OUTCOMES
from recommender.evaluation.matching import MODES
from recommender.evaluation.scorer import TaskCounts
from recommender.evaluation.stats import LEVEL, interval, resample_weights

TASK_NAMES = ("ner", "re", "spans")
RESAMPLES = 500  # intervals for a page that refreshes: 500 resamples keep it well under a second


@dataclass(frozen=True)
class Note:
    """One corrected note (by one annotator) as a model version saw it; figures of its scope(s)."""

    version: str
    project: str
    document_id: str
    annotator: str
    created: datetime
    figures: list[dict[str, Any]]  # one per scope (INCEpTION's entities and relations)

    @property
    def key(self) -> str:
        return f"{self.project}\x00{self.document_id}\x00{self.annotator}"


def notes_of(rows: Iterable[Any]) -> list[Note]:
    """Score rows (``ScoreRow``-like: model_version, task, project, document_id, annotator, created,
    figures) to notes: the newest row per (version, note, annotator, scope) kept."""
    newest: dict[tuple[str, str, str, str, str], Any] = {}
    for row in rows:  # oldest first: later rows replace earlier ones
        newest[(row.model_version, row.project, row.document_id, row.annotator, row.task)] = row
    grouped: dict[tuple[str, str, str, str], list[Any]] = defaultdict(list)
    for (version, project, doc, annotator, _), row in newest.items():
        grouped[(version, project, doc, annotator)].append(row)
    return [
        Note(version, project, doc, annotator, max(r.created for r in rs), [r.figures for r in rs])
        for (version, project, doc, annotator), rs in grouped.items()
    ]


def summarize(
    notes: Sequence[Note], resamples: int = RESAMPLES, level: float = LEVEL, labels: bool = False
) -> dict[str, Any]:
    """Notes, acceptance, F1 (per task, exact and relaxed) and edits per note, with intervals."""
    n = len(notes)
    out: dict[str, Any] = {"notes": n}
    if not n:
        return out
    weights = resample_weights(n, resamples)
    outcomes = np.zeros((n, 6), dtype=np.int64)  # accepted .. deleted, missed (spans)
    relation_outcomes = np.zeros((n, 3), dtype=np.int64)  # accepted, deleted, missed
    edits = np.zeros(n, dtype=np.float64)
    for i, note in enumerate(notes):
        for f in note.figures:
            for row in f.get("spans", {}).values():
                outcomes[i] += [
                    row["accepted"],
                    row["relabelled"],
                    row["rebounded"],
                    row["relabelled_rebounded"],
                    row["deleted"],
                    row["missed"],
                ]
            if "relations" in f:
                r = f["relations"]
                relation_outcomes[i] += [r["accepted"], r["deleted"], r["missed"]]
            edits[i] += f["edits"]["total"]
    suggested = outcomes[:, :5].sum(axis=1)
    out["spans_suggested"] = int(suggested.sum())
    out["outcomes"] = dict(
        zip(
            ("accepted", "relabelled", "rebounded", "relabelled_rebounded", "deleted", "missed"),
            (int(x) for x in outcomes.sum(axis=0)),
            strict=True,
        )
    )
    out["acceptance"] = _ratio(outcomes[:, 0], suggested, weights, level)
    rel_suggested = relation_outcomes[:, :2].sum(axis=1)
    out["relations"] = {
        "suggested": int(rel_suggested.sum()),
        "accepted": int(relation_outcomes[:, 0].sum()),
        "deleted": int(relation_outcomes[:, 1].sum()),
        "missed": int(relation_outcomes[:, 2].sum()),
        "acceptance": _ratio(relation_outcomes[:, 0], rel_suggested, weights, level),
    }
    out["edits_per_note"] = {
        "mean": round(float(edits.mean()), 3),
        "ci": _round(interval(weights @ edits / n, level)),
    }
    f1: dict[str, Any] = {}
    for task in TASK_NAMES:
        counts = _task_counts(notes, task)
        if counts is None:
            continue
        score = counts.score(resamples, level=level)
        f1[task] = {
            "notes": len(counts.doc_ids),
            **{m: {"f1": round(score.mode(m).f1, 4), "ci": _round(score.mode(m).ci_f1)} for m in MODES},
        }
        if labels and task == "spans":
            out["labels"] = {
                t: {
                    "f1": round(modes["exact"].f1, 4),
                    "ci": _round(modes["exact"].ci_f1),
                    "support": modes["exact"].tp + modes["exact"].fn,
                    "suggested": modes["exact"].tp + modes["exact"].fp,
                }
                for t, modes in score.per_type.items()
                if modes["exact"].tp + modes["exact"].fp + modes["exact"].fn
            }
    out["f1"] = f1
    if labels:  # what became of each label's suggestions
        by_label: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for note in notes:
            for f in note.figures:
                for label, row in f.get("spans", {}).items():
                    by_label[label][0] += row["accepted"]
                    by_label[label][1] += sum(row[k] for k in OUTCOMES)
        for label, (accepted, suggested) in by_label.items():
            if suggested:
                entry = out.setdefault("labels", {}).setdefault(label, {"f1": None, "ci": None})
                entry["acceptance"] = round(accepted / suggested, 4)
    return out


def _task_counts(notes: Sequence[Note], task: str) -> TaskCounts | None:
    """The per-note, per-label counts of ``task`` from the notes whose suggestion covered it."""
    per_note: list[tuple[str, Mapping[str, Mapping[str, list[int]]]]] = []
    for note in notes:
        merged: dict[str, dict[str, list[int]]] = {m: {} for m in MODES}
        covered = False
        for f in note.figures:
            if task in f["tasks"]:
                covered = True
                for m in MODES:
                    for label, c in f["tasks"][task][m].items():
                        prev = merged[m].get(label, [0, 0, 0])
                        merged[m][label] = [a + b for a, b in zip(prev, c, strict=True)]
        if covered:
            per_note.append((note.key, merged))
    if not per_note:
        return None
    types = tuple(sorted({t for _, m in per_note for mode in MODES for t in m[mode]}))
    column = {t: k for k, t in enumerate(types)}
    arrays = {}
    for mode in MODES:
        c = np.zeros((3, len(per_note), len(types)), dtype=np.int64)
        for d, (_, merged) in enumerate(per_note):
            for label, (tp, fp, fn) in merged[mode].items():
                c[:, d, column[label]] = (tp, fp, fn)
        arrays[mode] = c
    return TaskCounts(tuple(k for k, _ in per_note), types, arrays)


def _ratio(num: np.ndarray, den: np.ndarray, weights: np.ndarray, level: float) -> dict[str, Any]:
    total = int(den.sum())
    if not total:
        return {"rate": None, "ci": None}
    boot_den = weights @ den
    boot = np.where(boot_den > 0, (weights @ num) / np.maximum(boot_den, 1), 0.0)
    return {"rate": round(float(num.sum()) / total, 4), "ci": _round(interval(boot, level))}


def _round(ci: Any) -> list[float]:
    return [round(float(x), 4) for x in ci]


def by_version(
    notes: Sequence[Note], resamples: int = RESAMPLES, level: float = LEVEL
) -> dict[str, dict[str, Any]]:
    """Per model version: the summary with per-label figures, per project and per UTC day."""
    versions: dict[str, list[Note]] = defaultdict(list)
    for note in notes:
        versions[note.version].append(note)
    out = {}
    for version, mine in sorted(versions.items(), key=lambda kv: min(n.created for n in kv[1])):
        projects: dict[str, list[Note]] = defaultdict(list)
        days: dict[str, list[Note]] = defaultdict(list)
        for note in mine:
            projects[note.project].append(note)
            days[note.created.date().isoformat()].append(note)
        out[version] = {
            **summarize(mine, resamples, level, labels=True),
            "first": min(n.created for n in mine).isoformat(timespec="seconds"),
            "last": max(n.created for n in mine).isoformat(timespec="seconds"),
            "projects": {p: _brief(summarize(ns, resamples, level)) for p, ns in sorted(projects.items())},
            "days": {d: _brief(summarize(ns, resamples, level)) for d, ns in sorted(days.items())},
        }
    return out


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a summary (per project, per day)."""
    spans = summary.get("f1", {}).get("spans")
    return {
        "notes": summary["notes"],
        "acceptance": summary.get("acceptance"),
        "f1_spans": spans["exact"] if spans else None,
        "edits_per_note": summary.get("edits_per_note"),
    }


__all__ = ["RESAMPLES", "Note", "by_version", "notes_of", "summarize"]
