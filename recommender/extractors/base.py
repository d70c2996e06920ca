"""The one extractor interface that every model family implements and every adapter calls."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from recommender.document import Choice, Document
from recommender.errors import ConfigError, ModelError
from recommender.progress import Progress
from recommender.schema import load_schema

MODEL_INFO_FILE = "kiwi_model.json"

T = TypeVar("T")


def setting(default: Any, help: str, *, flag: str | None = None) -> Any:
    """A config field with its help text (shown by the CLI and saved with the model); ``flag`` names its
    ``kiwi train`` option where that is not ``--field-name``."""
    metadata = {"help": help} | ({"flag": flag} if flag else {})
    return field(default=default, metadata=metadata)


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


@dataclass(frozen=True)
class BaseModelRef:
    """An external base model a model folder builds on (an adapter-only folder names it instead of
    holding gigabytes of weights): its name as given (hub name, folder or GGUF file) and a checksum of
    its weight files, so loading against different weights is refused by name."""

    name: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseModelRef:
        try:
            return cls(str(data["name"]), str(data["sha256"]))
        except (KeyError, TypeError):
            raise ModelError(f"base_model must name [name] and [sha256], got [{data}]") from None

    def verify(self, files: Sequence[Path]) -> None:
        """Raise ModelError unless ``files`` (the resolved base's weight files) have this checksum."""
        found = file_checksum(files)
        if found != self.sha256:
            raise ModelError(
                f"base model [{self.name}] has checksum [{found[:16]}], the model was trained on "
                f"[{self.sha256[:16]}]: point it at the same weights"
            )


_CHECKSUMS: dict[tuple[str, int, int], str] = {}


def file_checksum(files: Sequence[Path]) -> str:
    """sha256 over the contents of ``files`` in name order; memoised per file by size and mtime, since
    a base model's weights are hashed at every load."""
    h = hashlib.sha256()
    for path in sorted((Path(f) for f in files), key=lambda p: p.name):
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _CHECKSUMS:
            with path.open("rb") as f:
                _CHECKSUMS[key] = hashlib.file_digest(f, "sha256").hexdigest()
        h.update(f"{path.name}:{_CHECKSUMS[key]}\n".encode())
    return h.hexdigest()


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
    base_model: dict[str, Any] | None = None  # a BaseModelRef when the weights build on an external base

    @property
    def base(self) -> BaseModelRef | None:
        return BaseModelRef.from_dict(self.base_model) if self.base_model else None

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
    holding the predicted spans and relations with ``source`` = the model version, a confidence
    ``score`` in [0, 1] on every span and relation, ``Document.uncertainty`` (see
    :func:`least_confidence`), ``Document.choices`` where the family exposes its distributions (see
    :func:`choice`) and ``Document.drops``. Writing them into a CAS or Label Studio JSON is
    the adapters' job.

    A family declares its typed training config (``config_class``) and its trainer (``train``) here,
    beside the class, so ``kiwi train FAMILY`` and the retraining loop need nothing else.
    """

    name: ClassVar[str]  # the registry name
    config_class: ClassVar[type[ExtractorConfig]]
    # Too slow to predict inside a request (generation: seconds to minutes a note): the service
    # serves its predictions from the prediction cache, computed in the background.
    ahead: ClassVar[bool] = False
    # "module:function" of the family's trainer where it has a module of its own (torch training
    # loops): that module builds extractors of this class, so it is named here, not imported.
    trainer: ClassVar[str | None] = None

    info: ModelInfo

    @property
    def version(self) -> str:
        return self.info.version

    @abstractmethod
    def predict(self, docs: Sequence[Document], *, entities_given: bool = False) -> list[Document]:
        """Annotate ``docs``. With ``entities_given`` the main entities already in each document are
        kept as they are (RE mode of the paper) and only modifiers and relations are predicted."""

    def predict_in_background(
        self,
        docs: Sequence[Document],
        *,
        entities_given: bool = False,
        between_steps: Callable[[], None] | None = None,
    ) -> list[Document]:
        """``predict`` for a background worker: a family that predicts in many steps (generation)
        calls ``between_steps`` between them, which waits while requests run on the same cores.
        Families that predict in one short step just predict."""
        return self.predict(docs, entities_given=entities_given)

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write weights, configuration and ``kiwi_model.json`` into ``folder``."""

    def configure(self, **values: Any) -> None:
        """Override config fields of a loaded model; families with nothing to override refuse."""
        raise ConfigError(f"extractor [{self.name}] takes no settings, got [{', '.join(sorted(values))}]")

    @classmethod
    @abstractmethod
    def load(cls, folder: Path) -> Extractor:
        """Load a model folder written by ``save``."""

    @classmethod
    def train(
        cls,
        train_docs: Sequence[Document],
        dev_docs: Sequence[Document] = (),
        config: ExtractorConfig | None = None,
        out_dir: Path | None = None,
        *,
        progress: Progress[Any] | None = None,
    ) -> Extractor:
        """Train a model on ``train_docs`` (early stopping and calibration on ``dev_docs`` where the
        family does that) and save it to ``out_dir``. A config field ``init_from`` names a model folder
        of the same family to start from. Runs the family's ``trainer``; extractors without one (test
        doubles, remote models) refuse."""
        if cls.trainer is None:
            raise ConfigError(f"extractor [{cls.name}] cannot be trained")
        module, _, function = cls.trainer.partition(":")
        train = getattr(importlib.import_module(module), function)
        return train(train_docs, dev_docs, cls.training_config(config), out_dir, progress)  # type: ignore[no-any-return]

    @classmethod
    def training_config(cls, config: ExtractorConfig | None) -> Any:
        """``config`` for ``train`` (the family's defaults when None); another family's is refused."""
        if config is None:
            return cls.config_class()
        if not isinstance(config, cls.config_class):
            raise ConfigError(
                f"[{cls.name}] trains with a {cls.config_class.__name__}, not [{type(config).__name__}]"
            )
        return config


def least_confidence(confidences: Iterable[float]) -> float:
    """A note's uncertainty: 1 - the mean confidence of the model's decisions in it (1.0 when it made
    none: nothing is known about the note)."""
    values = list(confidences)
    return round(1.0 - sum(values) / len(values), 4) if values else 1.0


def choice(kind: str, begin: int, end: int, probs: Sequence[float], chosen: int) -> Choice:
    """A decision (``Document.choices``) among outcomes with probabilities ``probs``, ``chosen`` the one
    the model took."""
    ranked = sorted(probs, reverse=True)
    entropy = -sum(q * math.log(q) for q in probs if q > 0) / math.log(len(probs)) if len(probs) > 1 else 0.0
    second = ranked[1] if len(ranked) > 1 else 0.0
    return Choice(
        kind, begin, end, round(probs[chosen], 4), round(ranked[0], 4), round(second, 4), round(entropy, 4)
    )


def binary_choice(kind: str, begin: int, end: int, prob: float, threshold: float) -> Choice:
    """A yes/no decision taken when ``prob`` >= ``threshold`` (an entity-modifier link)."""
    return choice(kind, begin, end, [prob, 1.0 - prob], 0 if prob >= threshold else 1)


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
