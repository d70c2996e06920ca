"""The promotion gate: candidate and promoted model scored on the same notes, and the decision.

The candidate is promoted only if, on every evaluation set that has notes, its score (mean of exact
NER and RE F1) is not lower than the current model's by more than ``promotion_margin``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recommender.document import Document
from recommender.evaluation import evaluate_extractor

RESAMPLES = 200  # bootstrap intervals only decorate the gate's figures; the decision uses point F1


def decide(
    candidate: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]] | None, margin: float
) -> tuple[bool, str]:
    """Promote unless the candidate is worse than the current model by more than ``margin`` on any
    evaluation set with notes. Returns (promote, reason)."""
    if current is None:
        return True, "the first model: promoted as the baseline"
    if not candidate:
        return True, "not measured (no held-out corrections and no development notes): promoted untested"
    worse = []
    parts = []
    for name, cand in candidate.items():
        a, b = cand["score"], current[name]["score"]
        parts.append(f"{name} {a:.4f} vs {b:.4f}")
        if a < b - margin:
            worse.append(f"{name} score {a:.4f} < current {b:.4f} - margin {margin}")
    if worse:
        return False, "; ".join(worse)
    return True, "not worse: " + ", ".join(parts)


def scores(extractor: Any, heldout: Sequence[Document], dev: Sequence[Document]) -> dict[str, dict[str, Any]]:
    """Exact NER/RE/span scores and the gate's score on each evaluation set that has notes."""
    out = {}
    for name, docs in (("heldout", heldout), ("dev", dev)):
        if docs:
            ev = evaluate_extractor(extractor, docs, resamples=RESAMPLES).to_dict()
            slim = {t: {"exact": _slim(ev[t]["exact"])} for t in ("ner", "re", "spans")}
            score = (ev["ner"]["exact"]["f1"] + ev["re"]["exact"]["f1"]) / 2
            out[name] = {**slim, "score": round(score, 4), "documents": len(docs)}
    return out


def _slim(score: dict[str, Any]) -> dict[str, Any]:
    return {
        k: round(score[k], 4) if isinstance(score[k], float) else score[k]
        for k in ("precision", "recall", "f1", "tp", "fp", "fn")
    }


__all__ = ["RESAMPLES", "decide", "scores"]
