"""Simulated annotators for the agreement-aware training rules: careful ones who save the gold, and a
noisy one who drops or mislabels a share of the spans.

``annotated_pool`` hands every note to one annotator (the noisy one for ``noisy_share`` of them) and a
share of the notes to a second one, the double annotation agreement is measured on; each version is
a correction as the store returns it (``meta["correction"]`` with project and annotator).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from recommender.document import Document
from recommender.schema import load_schema

CAREFUL = ("ann-a", "ann-b")
NOISY = "ann-noisy"


def noisy_copy(doc: Document, drop: float, mislabel: float, rng: random.Random) -> Document:
    """``doc`` as a careless annotator saves it: each span left out with probability ``drop``, else
    given another label of its layer (entity or modifier) with probability ``mislabel``; relations
    to a left-out span go with it."""
    schema = load_schema()
    spans = []
    for s in doc.spans:
        r = rng.random()
        if r < drop:
            continue
        if r < drop + mislabel * (1 - drop):
            layer = schema.entity_names if schema.is_entity(s.label) else schema.modifier_names
            others = [label for label in layer if label != s.label]
            if others:
                s = replace(s, label=rng.choice(others))
        spans.append(replace(s))
    kept = {s.id for s in spans}
    relations = [replace(r) for r in doc.relations if r.head in kept and r.tail in kept]
    return replace(doc, spans=spans, relations=relations, meta=dict(doc.meta))


def annotated_pool(
    notes: Sequence[Document],
    *,
    noisy_share: float = 0.2,
    overlap: float = 0.3,
    drop: float = 0.4,
    mislabel: float = 0.3,
    seed: int = 0,
    noisy: bool = True,
) -> list[Document]:
    """The corrections of ``notes``: one version per note, a second one for ``overlap`` of them.
    ``noisy=False`` gives the same assignment with every annotator careful (the clean baseline)."""
    rng = random.Random(seed)
    order = list(range(len(notes)))
    rng.shuffle(order)
    n_noisy = round(noisy_share * len(notes))
    first = {i: NOISY if k < n_noisy else CAREFUL[k % 2] for k, i in enumerate(order)}
    second_rng = random.Random(seed + 1)
    out = []
    for i, note in enumerate(notes):
        who = [first[i]]
        if second_rng.random() < overlap:
            who.append(second_rng.choice([a for a in (*CAREFUL, NOISY) if a != first[i]]))
        for annotator in who:
            version = replace(
                note, meta={**note.meta, "correction": {"project": "sim", "annotator": annotator}}
            )
            if noisy and annotator == NOISY:
                version = noisy_copy(version, drop, mislabel, rng)
            out.append(replace(version, id=f"sim:{annotator}:{note.id}"))
    return out


__all__ = ["CAREFUL", "NOISY", "annotated_pool", "noisy_copy"]
