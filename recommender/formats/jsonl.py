"""The document model itself as JSON lines: one document per line, every field kept."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from recommender.document import Choice, Document, Relation, Segment, Span
from recommender.errors import FormatError, NotFoundError


def to_dict(doc: Document) -> dict[str, Any]:
    return asdict(doc)


def from_dict(data: dict[str, Any], *, source: str | Path | None = None) -> Document:
    try:
        return Document(
            id=str(data["id"]),
            text=data["text"],
            spans=[Span(**s) for s in data.get("spans", [])],
            relations=[Relation(**r) for r in data.get("relations", [])],
            sentences=[Segment(**s) for s in data.get("sentences", [])],
            tokens=[Segment(**t) for t in data.get("tokens", [])],
            meta=dict(data.get("meta", {})),
            uncertainty=None if data.get("uncertainty") is None else float(data["uncertainty"]),
            choices=[Choice(**c) for c in data.get("choices", [])],
            drops={str(k): int(v) for k, v in (data.get("drops") or {}).items()},
        ).validate(strict_labels=False)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FormatError(f"not a document record ({e})", source=source) from None


def read_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSON-lines file."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError("no such file", source=path)
    # Only "\n" ends a record: JSON leaves U+2028, U+0085... unescaped, and splitlines() breaks there.
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise FormatError(f"line {lineno}: malformed JSON ({e.msg})", source=path) from None


def read(path: Path) -> list[Document]:
    return [from_dict(data, source=f"{path}:{lineno}") for lineno, data in read_lines(path)]


def write(docs: Iterable[Document], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(to_dict(doc), ensure_ascii=False) + "\n")
