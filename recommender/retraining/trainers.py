"""Trainer adapters: an extractor family's ``train`` as the retraining jobs call it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Protocol

from recommender.document import Document
from recommender.extractors import family, get_extractor_class
from recommender.extractors.base import ModelInfo
from recommender.progress import Progress


class Trainer(Protocol):
    def __call__(
        self,
        train_docs: Sequence[Document],
        dev_docs: Sequence[Document],
        out_dir: Path,
        init_from: Path | None,
        *,
        epochs: int | None,
        track: Progress[Any] | None = None,
    ) -> Path: ...


def get_trainer(name: str, config: Mapping[str, Any] | None = None) -> Trainer:
    """The retraining loop's trainer for an extractor family: its own ``train`` with its default config
    updated by ``config`` (``KIWI_TRAINER_CONFIG``), started from the promoted model when that is of
    the same family (its config has ``init_from``: a LLaMA continues the promoted adapter), and with
    ``epochs`` (and patience no longer than that) when a fixed count is asked for."""
    fam = family(name)  # an unknown name fails now; the family's module (torch) loads with the first job
    values = dict(config or {})
    fam.config_class().from_dict(values)  # a misspelt or invalid setting fails now, not in the first job

    def train(
        train_docs: Sequence[Document],
        dev_docs: Sequence[Document],
        out_dir: Path,
        init_from: Path | None,
        *,
        epochs: int | None,
        track: Progress[Any] | None = None,
    ) -> Path:
        cls = get_extractor_class(name)
        names = {f.name for f in fields(cls.config_class)}  # type: ignore[arg-type]
        overrides: dict[str, Any] = {}
        if "init_from" in names and init_from is not None and _extractor_name(init_from) == cls.name:
            overrides["init_from"] = str(init_from)
        if epochs is not None and "epochs" in names:
            overrides["epochs"] = epochs
            if "patience" in names:
                overrides["patience"] = min(epochs, cls.config_class().patience)  # type: ignore[attr-defined]
        overrides |= values
        cls.train(train_docs, dev_docs, cls.config_class(**overrides), out_dir, progress=track)
        return out_dir

    return train


def _extractor_name(folder: Path) -> str:
    return ModelInfo.load(folder).extractor


__all__ = ["Trainer", "get_trainer"]
