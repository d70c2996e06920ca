"""Agreement-aware training data: notes corrected by several annotators (``KIWI_RETRAIN_AGREEMENT``).

Versions of one note are the corrections of the same text in the same project, one per annotator.
How agreement is measured is the agreement report's: exact span F1 from the one matcher, on the
notes two annotators share.

- ``all``: every annotator's version, as before.
- ``majority``: one version per note: a curator's when there is one (``curation``, INCEpTION's
  ``CURATION_USER``), else the spans (and relations between kept spans) that more than half of the
  versions have; with two versions, the version of the annotator who agrees more with the others.
- ``drop_disputed``: every version, without the spans another version contradicts (an overlapping
  span with another label or other bounds): a span one annotator left out stays in the others'.
- ``weighted``: every version, repeated by its annotator's weight: their mean span F1 against the
  others relative to the most consistent annotator's, as 0, 1 or 2 copies (``round(2 * weight)``),
  so an annotator agreeing half as well counts half, and one under a quarter not at all. An
  annotator who shares no note with another keeps weight 1 (nothing to judge them by).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Literal

from recommender.document import Document, Span
from recommender.evaluation.matching import align, span_mentions
from recommender.evaluation.stats import prf
from recommender.schema import load_schema

Rule = Literal["all", "majority", "drop_disputed", "weighted"]
RULES: tuple[Rule, ...] = ("all", "majority", "drop_disputed", "weighted")
CURATORS = frozenset({"curation", "CURATION_USER", "adjudicated"})


def annotator(doc: Document) -> str:
    return str(doc.meta.get("correction", {}).get("annotator", ""))


def _note(doc: Document) -> tuple[str, str]:
    project = str(doc.meta.get("correction", {}).get("project", ""))
    return project, hashlib.sha256(doc.text.encode("utf-8", "surrogatepass")).hexdigest()


def apply(docs: Sequence[Document], rule: Rule) -> list[Document]:
    """The training documents ``rule`` makes of ``docs`` (corrections with ``meta["correction"]``)."""
    if rule == "all":
        return list(docs)
    groups: dict[tuple[str, str], list[Document]] = defaultdict(list)
    for d in docs:
        groups[_note(d)].append(d)
    weights = annotator_weights(groups.values())
    out: list[Document] = []
    for versions in groups.values():
        if rule == "weighted":
            for d in versions:
                out += [d] * round(2 * weights.get(annotator(d), 1.0))
        elif len(versions) == 1:
            out += versions
        elif rule == "majority":
            out.append(_majority(versions, weights))
        else:
            out += _undisputed(versions)
    return out


def annotator_weights(groups: Iterable[list[Document]]) -> dict[str, float]:
    """Each annotator's mean exact span F1 against the others on shared notes, relative to the
    highest; annotators sharing no note are left out (the callers give them 1)."""
    pairs: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for versions in groups:
        for i, a in enumerate(versions):
            for b in versions[i + 1 :]:
                if annotator(a) == annotator(b):
                    continue
                gold, pred = span_mentions(a), span_mentions(b)
                al = align(gold, pred, "exact")
                counts = (len(al.pairs), len(al.spurious), len(al.missed))
                pairs[annotator(a)].append(counts)
                pairs[annotator(b)].append((counts[0], counts[2], counts[1]))
    f1 = {}
    for name, counts in pairs.items():
        tp, fp, fn = (sum(c[k] for c in counts) for k in range(3))
        f1[name] = float(prf(tp, fp, fn)[2])
    top = max(f1.values(), default=0.0)
    return {name: (value / top if top else 1.0) for name, value in f1.items()}


def _majority(versions: list[Document], weights: dict[str, float]) -> Document:
    curated = [d for d in versions if annotator(d) in CURATORS]
    if curated:
        return curated[-1]
    if len(versions) == 2:
        return max(versions, key=lambda d: weights.get(annotator(d), 1.0))
    support: dict[tuple[str, int, int], int] = defaultdict(int)
    for d in versions:
        for key in {s.key for s in d.spans}:
            support[key] += 1
    keep = {k for k, n in support.items() if 2 * n > len(versions)}
    links: dict[tuple[object, ...], int] = defaultdict(int)
    for d in versions:
        index = d.span_index()
        for key in {(index[r.head].key, index[r.tail].key, r.label) for r in d.relations}:
            links[key] += 1
    base = versions[0]
    doc = Document(id=base.id, text=base.text, meta=dict(base.meta))
    spans = {k: doc.add_span(*k) for k in sorted(keep, key=lambda k: (k[1], k[2], k[0]))}
    for (head, tail, label), n in sorted(links.items(), key=str):
        if 2 * n > len(versions) and head in spans and tail in spans:
            doc.add_relation(spans[head], spans[tail], label=label)  # type: ignore[index]
    return doc


def _undisputed(versions: list[Document]) -> list[Document]:
    """Each version without the spans another version contradicts (and relations touching them)."""
    entity = load_schema().is_entity
    out = []
    for d in versions:
        disputed = set()
        for o in versions:
            if o is d:
                continue
            keys = {t.key for t in o.spans}
            for s in d.spans:
                if s.key not in keys and any(_contradicts(s, t, entity) for t in o.spans):
                    disputed.add(s.id)
        kept = [s for s in d.spans if s.id not in disputed]
        relations = [r for r in d.relations if r.head not in disputed and r.tail not in disputed]
        out.append(replace(d, spans=kept, relations=relations, meta=dict(d.meta)))
    return out


def _contradicts(a: Span, b: Span, entity: Callable[[str], bool]) -> bool:
    """Overlapping spans of one layer (entities, or modifiers) that differ: a modifier nested in an
    entity is no contradiction."""
    return a.begin < b.end and b.begin < a.end and a.key != b.key and entity(a.label) == entity(b.label)


__all__ = ["RULES", "Rule", "annotator_weights", "apply"]
