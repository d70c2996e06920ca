"""What a job trains and is judged on: the stored corrections, the seed corpus and the fixed dev set.

The held-out slice of the corrections is chosen by a hash of project and document, so a note never
moves between training and evaluation as corrections accumulate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from recommender.corpora import SAMPLE_DIR, SHARED_MTSAMPLES, split_documents
from recommender.document import Document
from recommender.errors import ConfigError
from recommender.formats import read_documents
from recommender.settings import Settings
from recommender.store import CorrectionStore


@dataclass
class Corpora:
    """The notes a job uses besides the corrections: seed training notes and the fixed dev set."""

    seed: list[Document]
    dev: list[Document]


@dataclass
class TrainingData:
    train: list[Document]
    heldout: list[Document]
    dev: list[Document]

    def counts(self) -> dict[str, int]:
        return {
            "train_notes": len(self.train),
            "heldout_notes": len(self.heldout),
            "dev_notes": len(self.dev),
        }


def default_corpora(settings: Settings) -> Corpora:
    """Seed and dev notes from the settings, else the shared MTSamples split (train as seed, the fixed
    16-note dev split as dev) when it sits beside the checkout, else the team's sample corpus as seed."""
    seed = read_documents(settings.seed_corpus) if settings.seed_corpus else None
    dev = read_documents(settings.dev_corpus) if settings.dev_corpus else None
    if seed is None or dev is None:
        if SHARED_MTSAMPLES.is_dir():
            shared_train, shared_dev = split_documents(read_documents(SHARED_MTSAMPLES))
        else:
            shared_train, shared_dev = read_documents(SAMPLE_DIR), []
        seed = shared_train if seed is None else seed
        dev = shared_dev if dev is None else dev
    dev_texts = {d.text for d in dev}
    return Corpora([d for d in seed if d.text not in dev_texts], dev)


def assemble(store: CorrectionStore, corpora: Corpora, heldout_fraction: float) -> TrainingData:
    """The newest version of every stored correction (all projects: the service serves one model)
    plus the seed notes, minus the held-out corrections and the dev notes."""
    # Labels outside the schema stay in the store; models learn and are scored on the schema's.
    corrections = [_unique(d).in_schema() for d in store.latest()]
    train_corr, heldout = heldout_split(corrections, heldout_fraction)
    blocked = {d.text for d in heldout} | {d.text for d in corpora.dev}
    train = [d.in_schema() for d in corpora.seed if d.text not in blocked] + [
        d for d in train_corr if d.text not in blocked
    ]
    if not train:
        raise ConfigError("nothing to train on: no stored corrections and no seed notes")
    return TrainingData(train, heldout, corpora.dev)


def heldout_split(docs: Sequence[Document], fraction: float) -> tuple[list[Document], list[Document]]:
    """(train, held out) by a stable hash of each note's project and document id; with two or more
    corrected notes and a positive fraction, at least one is held out."""
    if fraction <= 0 or not docs:
        return list(docs), []
    groups = sorted({_group(d) for d in docs}, key=_hash)
    held = {g for g in groups if _hash(g) < fraction}
    if not held and len(groups) >= 2:
        held = {groups[0]}
    if len(held) == len(groups):
        held.discard(groups[-1])  # keep something to learn from
    return [d for d in docs if _group(d) not in held], [d for d in docs if _group(d) in held]


def _unique(doc: Document) -> Document:
    """Corrections of one note by several annotators or projects need distinct ids for scoring."""
    c = doc.meta.get("correction", {})
    return replace(doc, id=f"{c.get('project', '')}:{c.get('annotator', '')}:{doc.id}")


def _group(doc: Document) -> str:
    c = doc.meta.get("correction", {})
    return f"{c.get('project', '')}\x00{doc.id.split(':', 2)[-1]}"


def _hash(group: str) -> float:
    return int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


__all__ = ["Corpora", "TrainingData", "assemble", "default_corpora", "heldout_split"]
