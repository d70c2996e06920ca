"""The one span matcher: models against gold and annotators against each other use this code.

A ``Mention`` is anything that can be matched: a span (one character range) or a relation (two
ranges: head entity, then modifier). Two mentions match

- **exactly** when their labels are equal and every range is identical;
- **relaxed** when their labels are equal and every range overlaps (shares at least one character).

Matching is one-to-one, so a gold mention is credited at most once and the counts never exceed the
number of mentions. Duplicates (two identical mentions) are treated as a multiset: two identical
predictions against one gold mention give one match and one spurious prediction. Relaxed matching
first takes every exact match, then pairs the rest greedily by decreasing overlap (summed over the
ranges), ties broken by the input order of the gold then the predicted mention. Greedy is not always
the maximum matching, but it is deterministic, explainable to annotators and differs from the
optimum only when one mention overlaps several candidates of the same label.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from recommender.document import Document, Span
from recommender.schema import RELATION

Mode = Literal["exact", "relaxed"]
MODES: tuple[Mode, ...] = ("exact", "relaxed")


@dataclass(frozen=True, slots=True)
class Mention:
    """A matchable annotation: ``label`` must agree, ``ranges`` are compared range by range.

    ``ref`` keeps the span or relation id it came from (for disagreement lists); it plays no part
    in matching.
    """

    label: str
    ranges: tuple[tuple[int, int], ...]
    ref: str = field(default="", compare=False)

    @property
    def begin(self) -> int:
        return min(b for b, _ in self.ranges)

    @property
    def end(self) -> int:
        return max(e for _, e in self.ranges)


@dataclass(frozen=True, slots=True)
class Alignment:
    """The result of matching gold against predicted mentions (indices into the two inputs)."""

    pairs: tuple[tuple[int, int], ...]  # (gold index, predicted index), each index at most once
    missed: tuple[int, ...]  # gold mentions left unmatched (false negatives)
    spurious: tuple[int, ...]  # predicted mentions left unmatched (false positives)


def span_mention(span: Span) -> Mention:
    return Mention(span.label, ((span.begin, span.end),), span.id)


def relation_type(head_label: str, tail_label: str, relation: str = RELATION) -> str:
    """The per-type name of a relation, e.g. ``problem-negation`` (``:label`` only for non-hasAttr)."""
    name = f"{head_label}-{tail_label}"
    return name if relation == RELATION else f"{name}:{relation}"


def span_mentions(doc: Document, labels: Iterable[str] | None = None) -> list[Mention]:
    """The spans of ``doc`` (only those with a label in ``labels`` when given) as mentions."""
    keep = set(labels) if labels is not None else None
    return [span_mention(s) for s in doc.spans if keep is None or s.label in keep]


def relation_mentions(doc: Document) -> list[Mention]:
    """Each relation as a two-range mention (head, modifier) labelled with its pair type."""
    return [
        Mention(relation_type(h.label, t.label, r.label), ((h.begin, h.end), (t.begin, t.end)), r.id)
        for r, h, t in doc.relation_pairs()
    ]


def overlap(a: Mention, b: Mention) -> int:
    """Characters shared, summed over the ranges; 0 when any pair of ranges is disjoint."""
    total = 0
    for (ab, ae), (bb, be) in zip(a.ranges, b.ranges, strict=True):
        shared = min(ae, be) - max(ab, bb)
        if shared <= 0:
            return 0
        total += shared
    return total


def align(
    gold: Sequence[Mention], pred: Sequence[Mention], mode: Mode = "exact", *, same_label: bool = True
) -> Alignment:
    """Match ``pred`` to ``gold`` one-to-one (see the module docstring for the rules).

    ``same_label=False`` ignores labels (used to find type confusions between annotators); the
    ranges must still be identical (exact) or overlap (relaxed).
    """
    pairs: list[tuple[int, int]] = []
    gold_free = set(range(len(gold)))
    pred_free = set(range(len(pred)))

    # Exact matches first, as a multiset: identical keys pair off in document order.
    waiting: dict[tuple[object, ...], list[int]] = defaultdict(list)
    for j, p in enumerate(pred):
        waiting[_key(p, same_label)].append(j)
    for i, g in enumerate(gold):
        queue = waiting.get(_key(g, same_label))
        if queue:
            j = queue.pop(0)
            pairs.append((i, j))
            gold_free.discard(i)
            pred_free.discard(j)

    if mode == "relaxed" and gold_free and pred_free:
        candidates: list[tuple[int, int, int]] = []
        by_label: dict[object, list[int]] = defaultdict(list)
        for j in sorted(pred_free):
            by_label[pred[j].label if same_label else None].append(j)
        for i in sorted(gold_free):
            for j in by_label.get(gold[i].label if same_label else None, ()):
                shared = overlap(gold[i], pred[j])
                if shared > 0:
                    candidates.append((-shared, i, j))
        candidates.sort()
        for _, i, j in candidates:
            if i in gold_free and j in pred_free:
                pairs.append((i, j))
                gold_free.discard(i)
                pred_free.discard(j)

    pairs.sort()
    return Alignment(tuple(pairs), tuple(sorted(gold_free)), tuple(sorted(pred_free)))


def _key(m: Mention, same_label: bool) -> tuple[object, ...]:
    return (m.label, m.ranges) if same_label else (m.ranges,)
