"""What a job trains and is judged on: the stored corrections, the seed corpus and the fixed dev set.

The held-out slice of the corrections is chosen by a hash of project and document, so a note never
moves between training and evaluation as corrections accumulate.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from recommender.corpora import (
    KIWI_CITATION,
    SHARED_MTSAMPLES,
    SYNTHETIC_NOTES,
    development_split,
    fetch_kiwi,
    fetched_corpus,
    synthetic_seed,
)
from recommender.document import Document
from recommender.errors import ConfigError, KiwiError
from recommender.formats import read_documents
from recommender.retraining import consensus
from recommender.retraining.consensus import Rule
from recommender.settings import Settings
from recommender.store import CorrectionStore

log = logging.getLogger(__name__)


@dataclass
class Corpora:
    """The notes a job uses besides the corrections: seed training notes and the fixed dev set."""

    seed: list[Document]
    dev: list[Document]
    source: str = "given"  # what the seed is, for the user and the model's record
    synthetic: bool = False


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


SYNTHETIC = f"the generated synthetic corpus ({SYNTHETIC_NOTES} notes and the 4 samples)"
# Template notes: the model fits their own development split within a few epochs (0.98 NER at epoch
# 2); the figures in the README were measured with this many.
SYNTHETIC_EPOCHS = 6


def fetched_seed_dir(settings: Settings) -> Path:
    """Where the bootstrap caches the public MTSamples notes it fetched."""
    return settings.model_dir / "corpora" / "mtsamples"


def default_corpora(
    settings: Settings, *, fetch: bool = False, say: Callable[[str], None] | None = None
) -> Corpora:
    """Seed and dev notes. The seed is the first of: ``KIWI_SEED_CORPUS``; the shared MTSamples notes
    beside the checkout; the public ones fetched before (cached in the model folder); with ``fetch``,
    the public ones fetched now; the generated synthetic corpus. Dev is ``KIWI_DEV_CORPUS``, else the
    seed's development split (``corpora.development_split``), which may be empty: "not measured"."""
    say = say or log.info
    if settings.seed_corpus:
        seed, source = read_documents(settings.seed_corpus), f"KIWI_SEED_CORPUS ({settings.seed_corpus})"
    elif SHARED_MTSAMPLES.is_dir():
        seed, source = read_documents(SHARED_MTSAMPLES), f"the shared MTSamples notes ({SHARED_MTSAMPLES})"
    elif (cached := fetched_corpus(fetched_seed_dir(settings))) is not None:
        seed, source = read_documents(cached), f"the public MTSamples notes fetched before ({cached})"
    else:
        seed, source = _fetch_or_synthetic(settings, say) if fetch else (synthetic_seed(), SYNTHETIC)
    if settings.dev_corpus:
        train, dev = seed, read_documents(settings.dev_corpus)
    else:
        train, dev = development_split(seed)
    dev_texts = {d.text for d in dev}
    return Corpora([d for d in train if d.text not in dev_texts], dev, source, source == SYNTHETIC)


def _fetch_or_synthetic(settings: Settings, say: Callable[[str], None]) -> tuple[list[Document], str]:
    folder = fetched_seed_dir(settings)
    if settings.seed_fetch:
        say(f"Fetching the public MTSamples training notes from {settings.corpus_api} ...")
        try:
            got = fetch_kiwi(folder, api=settings.corpus_api, timeout=10.0)
        except KiwiError as e:
            say(
                f"No public corpus ({e}). Training on the generated synthetic corpus instead; for a "
                f"better first model set KIWI_SEED_CORPUS=DIR, or copy the notes (`kiwi corpus fetch "
                f"DIR` where there is internet) into {folder}."
            )
        else:
            say(f"Fetched {got.notes} notes into {folder}; licence: {got.licence}")
            say(f"Cite: {KIWI_CITATION}")
            return read_documents(folder), f"the public MTSamples notes ({folder})"
    return synthetic_seed(), SYNTHETIC


def assemble(
    store: CorrectionStore, corpora: Corpora, heldout_fraction: float, agreement: Rule = "all"
) -> TrainingData:
    """The newest version of every stored correction (all projects: the service serves one model)
    plus the seed notes, minus the held-out corrections and the dev notes; notes corrected by several
    annotators enter training as the ``agreement`` rule says (``consensus``)."""
    # Labels outside the schema stay in the store; models learn and are scored on the schema's.
    corrections = [_unique(d).in_schema() for d in store.latest()]
    train_corr, heldout = heldout_split(corrections, heldout_fraction)
    train_corr = consensus.apply(train_corr, agreement)
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


__all__ = [
    "SYNTHETIC_EPOCHS",
    "Corpora",
    "TrainingData",
    "assemble",
    "default_corpora",
    "fetched_seed_dir",
    "heldout_split",
]
