"""The served models: each one a ``Predictor`` (a name and the extractor it serves, swapped on
promotion), and ``ServedModels``, the main one and those of ``KIWI_SERVE_MODELS`` by name."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recommender.errors import ModelError, NotFoundError
from recommender.extractors import load_extractor
from recommender.extractors.base import Extractor
from recommender.settings import DEFAULT_MODEL

log = logging.getLogger(__name__)


class Predictor:
    """The served extractor. ``load`` builds the new model first and then swaps one reference, so a
    request that already took ``current`` finishes on the model it started with."""

    def __init__(
        self, name: str = DEFAULT_MODEL, overrides: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None:
        self.name = name  # as served: default, or a name of KIWI_SERVE_MODELS
        self._lock = threading.Lock()
        self._extractor: Extractor | None = None
        self.path: Path | None = None
        self.overrides = dict(overrides or {})  # config values by family (Settings.extractor_overrides)

    @property
    def current(self) -> Extractor:
        extractor = self._extractor
        if extractor is None:
            raise ModelError(
                "no model is loaded: start with `kiwi serve --bootstrap` or `--model DIR`, "
                "or promote a version with `kiwi models promote`"
            )
        return extractor

    @property
    def loaded(self) -> Extractor | None:
        """The served extractor, None before one is loaded."""
        return self._extractor

    @property
    def version(self) -> str | None:
        extractor = self._extractor
        return extractor.version if extractor is not None else None

    def load(self, path: Path) -> Extractor:
        extractor = load_extractor(path, self.overrides)  # slow part outside the lock
        with self._lock:
            self._extractor, self.path = extractor, Path(path)
        # The model, its tokenizer and the libraries are hundreds of thousands of objects that live
        # as long as the process: a full garbage collection traversing them stalled requests by
        # ~0.25 s (the 95th-percentile latency). Frozen objects are skipped by the collector.
        gc.collect()
        gc.freeze()
        log.info("serving model [%s] from [%s]", extractor.version, path)
        return extractor


class ServedModels:
    """The served models by name (``default`` is the main one, retrained and promoted)."""

    def __init__(self, main: Predictor) -> None:
        self.main = main
        self.by_name: dict[str, Predictor] = {DEFAULT_MODEL: main}

    def add(
        self, name: str, path: Path, overrides: Mapping[str, Mapping[str, Any]] | None = None
    ) -> Predictor:
        """Serve the model folder ``path`` as ``name`` beside the main one (not retrained)."""
        predictor = Predictor(name, overrides)
        predictor.load(path)
        self.by_name[name] = predictor
        return predictor

    def get(self, name: str | None) -> Predictor:
        """The predictor of a served model by name; None is the main one."""
        if name is None:
            return self.main
        try:
            return self.by_name[name]
        except KeyError:
            known = ", ".join(sorted(self.by_name))
            raise NotFoundError(f"no served model [{name}]; served: {known}") from None

    def slow(self) -> list[Predictor]:
        """The served models whose predictions come from the prediction cache (``Extractor.ahead``)."""
        return [p for _, p in sorted(self.by_name.items()) if p.loaded is not None and p.loaded.ahead]


__all__ = ["Predictor", "ServedModels"]
