"""A small registry of extractor families, chosen by the name saved in each model folder.

Adding a family is one entry in ``FAMILIES``: the module that defines (and registers) its extractor
class, which declares its trainer and training config beside it, and the config class, which the CLI
reads without importing the family's heavy dependencies (torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recommender.errors import ConfigError
from recommender.extractors.base import Extractor, ExtractorConfig, ModelInfo


@dataclass(frozen=True)
class Family:
    name: str  # registry name, saved in kiwi_model.json
    command: str  # ``kiwi train COMMAND``
    module: str  # defines and registers the extractor class
    config: str  # "module:Class" of its typed training config (a light import)
    summary: str

    def config_class(self) -> type[ExtractorConfig]:
        module, _, cls = self.config.partition(":")
        return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


FAMILIES: tuple[Family, ...] = (
    Family(
        "kiwi.encoder.v1",
        "bert",
        "recommender.extractors.encoder.extractor",
        "recommender.extractors.encoder.config:EncoderConfig",
        "fine-tune a BERT-style encoder (entities, modifiers, relations) with early stopping on dev",
    ),
    Family(
        "kiwi.llama.v1",
        "llama",
        "recommender.extractors.llama.extractor",
        "recommender.extractors.llama.config:LlamaConfig",
        "QLoRA-tune a LLaMA-style instruct model on Kiwi's instruction format (NER and RE prompts)",
    ),
    Family(
        "kiwi.lexicon.v1",
        "lexicon",
        "recommender.extractors.lexicon",
        "recommender.extractors.lexicon:LexiconConfig",
        "build the dictionary baseline (seconds; a floor every model should beat)",
    ),
)
_REGISTRY: dict[str, type[Extractor]] = {}


def family(name: str) -> Family:
    """The family of a registry name (``kiwi.encoder.v1``) or ``kiwi train`` command (``bert``)."""
    for f in FAMILIES:
        if name in (f.name, f.command):
            return f
    known = ", ".join(f"{f.name} ({f.command})" for f in FAMILIES)
    raise ConfigError(f"unknown extractor [{name}]; known: {known}")


def register(name: str) -> Callable[[type[Extractor]], type[Extractor]]:
    def add(cls: type[Extractor]) -> type[Extractor]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ConfigError(f"extractor name [{name}] is already registered by {_REGISTRY[name]!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def get_extractor_class(name: str) -> type[Extractor]:
    """The class of a registry name or ``kiwi train`` command, importing its family's module."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    f = family(name)
    importlib.import_module(f.module)
    try:
        return _REGISTRY[f.name]
    except KeyError:
        raise ConfigError(f"module [{f.module}] does not register extractor [{f.name}]") from None


def load_extractor(folder: Path, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Extractor:
    """Load any model folder: ``kiwi_model.json`` names the extractor that reads the rest.

    ``overrides`` maps a family name to config values that replace the saved ones once loaded (the
    service's engine settings for ``kiwi.llama.v1``); other families' entries are not applied."""
    info = ModelInfo.load(Path(folder))
    extractor = get_extractor_class(info.extractor).load(Path(folder))
    values = (overrides or {}).get(info.extractor)
    if values:
        extractor.configure(**values)
    return extractor


__all__ = [
    "FAMILIES",
    "Extractor",
    "Family",
    "ModelInfo",
    "family",
    "get_extractor_class",
    "load_extractor",
    "register",
]
