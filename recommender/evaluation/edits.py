"""What an annotator must change to turn a pre-annotated note into its gold: the cost active learning
saves, counted the way a corrected note is paid for (clinical pre-annotation studies count time or
edits, not tokens).

Spans are paired one to one, in this order: identical (no edit), same range with another label
(relabelled), overlapping with the same label (re-bounded), overlapping with another label (relabelled
and re-bounded: two edits); the predicted spans left are deleted and the gold ones left are added. A
predicted relation is kept when its two spans are paired with the two spans of a gold relation, else
deleted; gold relations not kept are added.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from recommender.document import Document, Span

FIELDS = (
    "spans_added",
    "spans_deleted",
    "spans_relabelled",
    "spans_rebounded",
    "relations_added",
    "relations_deleted",
)


@dataclass
class Edits:
    spans_added: int = 0
    spans_deleted: int = 0
    spans_relabelled: int = 0
    spans_rebounded: int = 0
    relations_added: int = 0
    relations_deleted: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, f) for f in FIELDS)

    def __add__(self, other: Edits) -> Edits:
        return Edits(**{f: getattr(self, f) + getattr(other, f) for f in FIELDS})

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def _overlap(a: Span, b: Span) -> bool:
    return a.begin < b.end and b.begin < a.end


# Pairing passes, cheapest correction first: (does the pass pair them, relabelled, re-bounded).
_PASSES: tuple[tuple[Callable[[Span, Span], bool], int, int], ...] = (
    (lambda g, p: g.key == p.key, 0, 0),
    (lambda g, p: (g.begin, g.end) == (p.begin, p.end), 1, 0),
    (lambda g, p: g.label == p.label and _overlap(g, p), 0, 1),
    (_overlap, 1, 1),
)


@dataclass(frozen=True)
class Pair:
    """A predicted span paired with a gold one, and what the annotator changed."""

    predicted: Span
    gold: Span
    relabelled: bool
    rebounded: bool


def pair_spans(predicted: Document, gold: Document) -> tuple[list[Pair], list[Span], list[Span]]:
    """Predicted spans paired one to one with gold spans, cheapest correction first; with the
    predicted spans left (deleted) and the gold spans left (added)."""
    pairs: list[Pair] = []
    free_gold = list(gold.spans)
    free_pred = list(predicted.spans)
    for same, relabel, rebound in _PASSES:
        for g in list(free_gold):
            match = next((p for p in free_pred if same(g, p)), None)
            if match is None:
                continue
            pairs.append(Pair(match, g, bool(relabel), bool(rebound)))
            free_gold.remove(g)
            free_pred.remove(match)
    return pairs, free_pred, free_gold


def kept_relations(predicted: Document, gold: Document, pairs: list[Pair]) -> tuple[int, int, int]:
    """(kept, deleted, added) relations: a predicted relation is kept when its two spans are paired
    with the two spans of a gold relation."""
    paired = {p.predicted.id: p.gold.id for p in pairs}
    gold_links = {(r.head, r.tail) for r in gold.relations}
    kept: set[tuple[str, str]] = set()
    deleted = 0
    for r in predicted.relations:
        link = (paired.get(r.head, ""), paired.get(r.tail, ""))
        if link in gold_links and link not in kept:
            kept.add(link)
        else:
            deleted += 1
    return len(kept), deleted, len(gold_links - kept)


def edits(predicted: Document, gold: Document) -> Edits:
    """The edits from ``predicted`` (a model's pre-annotation of the note) to ``gold``."""
    pairs, deleted, added = pair_spans(predicted, gold)
    _, relations_deleted, relations_added = kept_relations(predicted, gold, pairs)
    return Edits(
        spans_added=len(added),
        spans_deleted=len(deleted),
        spans_relabelled=sum(p.relabelled for p in pairs),
        spans_rebounded=sum(p.rebounded for p in pairs),
        relations_added=relations_added,
        relations_deleted=relations_deleted,
    )


__all__ = ["FIELDS", "Edits", "Pair", "edits", "kept_relations", "pair_spans"]
