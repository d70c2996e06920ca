"""The one extractor interface that every model family implements and every adapter calls."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Self

from recommender.document import Document
from recommender.errors import ConfigError, ModelError
from recommender.schema import load_schema

MODEL_INFO_FILE = "kiwi_model.json"


def setting(default: Any, help: str) -> Any:
    """A config field with its help text (shown by the CLI and saved with the model)."""
    return field(default=default, metadata={"help": help})


class ExtractorConfig:
    """Base of the typed hyper-parameter dataclasses saved beside every model (``ModelInfo.config``).

    Subclasses are dataclasses that check their values in ``__post_init__``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} settings [{', '.join(unknown)}]")
        return cls(**data)

    @classmethod
    def help(cls) -> dict[str, tuple[Any, str]]:
        """Setting name -> (default, help text), for documentation and the CLI."""
        return {
            f.name: (None if f.default is MISSING else f.default, f.metadata.get("help", ""))
            for f in fields(cls)  # type: ignore[arg-type]
        }


@dataclass
class ModelInfo:
    """What every model folder says about itself (``kiwi_model.json``)."""

    extractor: str  # registry name, e.g. "kiwi.encoder.v1"
    version: str  # model version shown to annotators, e.g. "encoder-20261125-1402-ab12cd"
    schema_version: str = field(default_factory=lambda: load_schema().version)
    package_version: str = field(default_factory=lambda: _package_version())
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    data_fingerprint: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MODEL_INFO_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> ModelInfo:
        path = Path(folder) / MODEL_INFO_FILE
        if not path.is_file():
            raise ModelError(f"not a Kiwi model folder (no {MODEL_INFO_FILE})", source=folder)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as e:
            raise ModelError(f"unreadable {MODEL_INFO_FILE} ({e})", source=folder) from None


class Extractor(ABC):
    """Predicts main entities, modifiers and hasAttr relations from documents.

    ``predict`` has no side effects: it returns new documents (same id, text and segmentation)
    holding the predicted spans and relations with scores and ``source`` = the model version.
    Writing them into a CAS or Label Studio JSON is the adapters' job.
    """

    name: ClassVar[str]  # the registry name

    info: ModelInfo

    @property
    def version(self) -> str:
        return self.info.version

    @abstractmethod
    def predict(self, docs: Sequence[Document], *, entities_given: bool = False) -> list[Document]:
        """Annotate ``docs``. With ``entities_given`` the main entities already in each document are
        kept as they are (RE mode of the paper) and only modifiers and relations are predicted."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write weights, configuration and ``kiwi_model.json`` into ``folder``."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path) -> Extractor:
        """Load a model folder written by ``save``."""


def fingerprint(docs: Sequence[Document]) -> str:
    """A stable hash of training data (ids, texts, annotations), saved beside every model."""
    h = hashlib.sha256()
    for d in sorted(docs, key=lambda d: d.id):
        h.update(d.id.encode())
        h.update(d.text.encode())
        for s in sorted(d.spans, key=lambda s: (s.begin, s.end, s.label)):
            h.update(f"{s.label}:{s.begin}:{s.end}".encode())
        idx = d.span_index()
        for r in d.relations:
            a, b = idx[r.head], idx[r.tail]
            h.update(f"{r.label}:{a.begin}:{a.end}:{b.begin}:{b.end}".encode())
    return h.hexdigest()[:16]


def _package_version() -> str:
    from recommender import __version__

    return __version__
