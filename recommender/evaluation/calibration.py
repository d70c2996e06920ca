"""Whether a model's scores mean what they say: expected calibration error (Guo et al. 2017, On
calibration of modern neural networks, ICML) of span and relation scores against gold, a span or
relation counted correct when it matches a gold one exactly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recommender.document import Document
from recommender.evaluation.scorer import pair_documents


def ece(pairs: Sequence[tuple[float, bool]], bins: int = 10) -> dict[str, Any]:
    """ECE over equal-width confidence bins: the mean |accuracy - confidence| of the bins, weighted by
    their share of the decisions; with each bin's figures for a reliability diagram."""
    table = []
    total = len(pairs)
    error = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(p, ok) for p, ok in pairs if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if not inside:
            continue
        conf = sum(p for p, _ in inside) / len(inside)
        acc = sum(ok for _, ok in inside) / len(inside)
        error += len(inside) / total * abs(acc - conf)
        table.append(
            {"bin": [lo, hi], "n": len(inside), "confidence": round(conf, 4), "accuracy": round(acc, 4)}
        )
    return {"ece": round(error, 4), "decisions": total, "bins": table}


def calibration(gold: Sequence[Document], pred: Sequence[Document], bins: int = 10) -> dict[str, Any]:
    """ECE of the scored spans and of the scored relations of ``pred`` against ``gold`` (paired by id)."""
    spans: list[tuple[float, bool]] = []
    relations: list[tuple[float, bool]] = []
    for g, p in pair_documents(gold, pred):
        keys = {s.key for s in g.spans}
        links = {(h.key, t.key) for _, h, t in g.relation_pairs()}
        spans += [(s.score, s.key in keys) for s in p.spans if s.score is not None]
        relations += [
            (r.score, (h.key, t.key) in links) for r, h, t in p.relation_pairs() if r.score is not None
        ]
    return {"spans": ece(spans, bins), "relations": ece(relations, bins)}


__all__ = ["calibration", "ece"]
