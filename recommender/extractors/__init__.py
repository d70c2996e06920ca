"""A small registry of extractors, chosen by the name saved in each model folder."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from recommender.errors import ConfigError
from recommender.extractors.base import Extractor, ModelInfo

# Registry name -> module that registers it (imported on first use, so torch loads only when needed).
_MODULES: dict[str, str] = {
    "kiwi.encoder.v1": "recommender.extractors.encoder.extractor",
    "kiwi.lexicon.v1": "recommender.extractors.lexicon",
}
_REGISTRY: dict[str, type[Extractor]] = {}


def register(name: str) -> Callable[[type[Extractor]], type[Extractor]]:
    def add(cls: type[Extractor]) -> type[Extractor]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ConfigError(f"extractor name [{name}] is already registered by {_REGISTRY[name]!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def get_extractor_class(name: str) -> type[Extractor]:
    if name not in _REGISTRY and name in _MODULES:
        importlib.import_module(_MODULES[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(set(_MODULES) | set(_REGISTRY)))
        raise ConfigError(f"unknown extractor [{name}]; known: {known}") from None


def load_extractor(folder: Path) -> Extractor:
    """Load any model folder: ``kiwi_model.json`` names the extractor that reads the rest."""
    info = ModelInfo.load(Path(folder))
    return get_extractor_class(info.extractor).load(Path(folder))


__all__ = ["Extractor", "ModelInfo", "get_extractor_class", "load_extractor", "register"]
