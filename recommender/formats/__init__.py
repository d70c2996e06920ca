"""Annotation formats. Each module converts between its format and ``Document`` at the edge.

Every format module has ``read(path) -> list[Document]`` and ``write(docs, path)``; ``path`` is a
folder or a single file as the format dictates (see ``FORMATS``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from recommender.document import Document
from recommender.errors import ConfigError, FormatError, NotFoundError


@dataclass(frozen=True)
class FormatInfo:
    name: str
    module: str
    single_file: bool  # True: one file holds many documents (a Label Studio export, a JSONL)
    description: str

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


FORMATS: dict[str, FormatInfo] = {
    f.name: f
    for f in (
        FormatInfo("brat", "recommender.formats.brat", False, "folder of NAME.txt + NAME.ann"),
        FormatInfo("xmi", "recommender.formats.xmi", False, "folder of UIMA CAS XMI + TypeSystem.xml"),
        FormatInfo("labelstudio", "recommender.formats.labelstudio", True, "Label Studio JSON tasks"),
        FormatInfo("markup", "recommender.formats.markup", True, "Kiwi span markup, JSONL"),
        FormatInfo("bio", "recommender.formats.bio", True, "BIO / CoNLL, one token a line"),
        FormatInfo("jsonl", "recommender.formats.jsonl", True, "the document model as JSON lines"),
    )
}


def get_format(name: str) -> FormatInfo:
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(f"unknown format [{name}]; expected one of {', '.join(FORMATS)}") from None


def detect_format(path: Path) -> str:
    """Guess the format of a file or folder from its name and contents."""
    path = Path(path)
    if not path.exists():
        raise NotFoundError("no such file or folder", source=path)
    if path.is_dir():
        if any(path.glob("*.xmi")):
            return "xmi"
        if any(path.glob("*.ann")) or any(path.glob("*.txt")):
            return "brat"
        raise FormatError("cannot tell the format of this folder (no .txt/.ann or .xmi files)", source=path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "labelstudio"
    if suffix == ".jsonl":
        head = path.read_text(encoding="utf-8", errors="replace").lstrip()[:400]
        return "markup" if '"markup"' in head or '"ner"' in head else "jsonl"
    if suffix in {".bio", ".conll", ".tsv"}:
        return "bio"
    if suffix in {".txt", ".ann"}:
        return "brat"
    if suffix == ".xmi":
        return "xmi"
    raise FormatError(f"cannot tell the format from the suffix [{suffix}]; pass --format", source=path)


def read_documents(path: Path, fmt: str | None = None) -> list[Document]:
    return get_format(fmt or detect_format(path)).load().read(Path(path))


def write_documents(docs: Iterable[Document], path: Path, fmt: str) -> None:
    get_format(fmt).load().write(list(docs), Path(path))
