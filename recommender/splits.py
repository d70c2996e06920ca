"""Which notes train a model, which choose among its candidates, and which report its score.

Three disjoint parts of a training corpus, chosen by the notes (their ids), never by the folder:

- **dev** reports the score (model cards, benchmarks, the promotion gate) and chooses nothing;
- **validation**, carved from the training notes, chooses: early stopping, the calibration
  temperatures, any tuning;
- the rest fits the weights.

For the 96 MTSamples notes both are documented in ``corpora/mtsamples_split.json`` (see
corpora/README.md); every other corpus gets the rule they were drawn by, on its own note ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from recommender.document import Document
from recommender.packaged import packaged_path

SPLIT_FILE = packaged_path("corpora/mtsamples_split.json")
# Fewer notes than this give a development split too small to say anything: "not measured" instead.
MIN_NOTES_FOR_DEV = 12
DEV_FRACTION = 1 / 6  # 16 of the 96 MTSamples notes
# Fewer training notes than this keep them all for fitting: nothing is selected, the last epoch is kept.
MIN_NOTES_FOR_VALIDATION = 12
VALIDATION_FRACTION = 0.15  # 12 of the 80 MTSamples training notes


def load_split() -> dict[str, list[str]]:
    """The fixed splits of the 96 MTSamples notes: ``dev``, ``train`` and ``validation`` (in train)."""
    data = json.loads(SPLIT_FILE.read_text(encoding="utf-8"))
    return {"train": data["train"], "dev": data["dev"], "validation": data["validation"]}


def _id_hash(doc_id: str) -> str:
    return hashlib.sha256(doc_id.encode("utf-8")).hexdigest()


def _documented(docs: Sequence[Document], split: dict[str, list[str]]) -> bool:
    return bool({d.id for d in docs} & (set(split["train"]) | set(split["dev"])))


def _first_by_hash(docs: Sequence[Document], k: int) -> set[str]:
    return {d.id for d in sorted(docs, key=lambda d: _id_hash(d.id))[:k]}


def _apart(docs: Sequence[Document], ids: set[str]) -> tuple[list[Document], list[Document]]:
    return [d for d in docs if d.id not in ids], [d for d in docs if d.id in ids]


def split_documents(docs: Sequence[Document]) -> tuple[list[Document], list[Document]]:
    """(train, dev) by the fixed split; notes not named in it go to train."""
    return _apart(docs, set(load_split()["dev"]))


def development_split(
    docs: Sequence[Document], source: object = None
) -> tuple[list[Document], list[Document]]:
    """(train, dev) for training a model on ``docs`` when no dev set is given; the notes decide, not
    the folder they were read from (``source`` is kept for callers and not consulted).

    - Notes that are MTSamples notes of the documented split (by id, from ``../shared``, a fetched
      copy or any other folder): that split, so no copy ever trains on a documented dev note; notes
      it does not name go to train.
    - Other corpora of at least ``MIN_NOTES_FOR_DEV`` notes: the same rule the documented split was
      drawn by, ordered by the SHA-256 of the note id, the first sixth (at least 2) is dev.
    - Smaller corpora: no dev split (the model card then says "not measured").
    """
    if _documented(docs, load_split()):
        return split_documents(docs)
    if len(docs) < MIN_NOTES_FOR_DEV:
        return list(docs), []
    return _apart(docs, _first_by_hash(docs, max(2, round(len(docs) * DEV_FRACTION))))


def validation_split(train_docs: Sequence[Document]) -> tuple[list[Document], list[Document]]:
    """(fit, validation) of a model's training notes: what its trainer selects on, so that the
    development notes it is reported on choose nothing.

    - MTSamples notes of the documented split: its ``validation`` notes (12 of the 80); other notes
      (corrections) fit.
    - Other corpora of at least ``MIN_NOTES_FOR_VALIDATION`` notes: ordered by the SHA-256 of the
      note id, the first 15% (at least 2).
    - Smaller: no validation notes; the trainer selects by training loss and fits no temperatures.
    """
    split = load_split()
    if _documented(train_docs, split):
        return _apart(train_docs, set(split["validation"]))
    if len(train_docs) < MIN_NOTES_FOR_VALIDATION:
        return list(train_docs), []
    k = max(2, round(len(train_docs) * VALIDATION_FRACTION))
    return _apart(train_docs, _first_by_hash(train_docs, k))


__all__ = [
    "MIN_NOTES_FOR_DEV",
    "MIN_NOTES_FOR_VALIDATION",
    "development_split",
    "load_split",
    "split_documents",
    "validation_split",
]
