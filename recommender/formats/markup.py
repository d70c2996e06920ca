"""The Kiwi span markup as a file format (``kiwi convert --to markup``): JSON lines, one record per sentence::

    {"doc_id", "sentence_index", "begin", "end", "ner": "<markup>",
     "re": [{"entity": {"id", "label", "begin", "end"}, "input": "<markup>", "target": "<markup>"}]}

The markup language itself (wrap, parse, align) is ``recommender.markup_language``. The first record of each
document also carries ``doc_text``, the note itself, so :func:`read` restores exact offsets. Without it
(records made elsewhere), :func:`read` rebuilds the text from the markup: tokens joined by single
spaces, sentences by newlines; that text is whitespace-normalised. What the markup cannot carry is
counted by :func:`write` (see ``recommender.markup_language.losses``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from recommender.document import Document, Relation, Segment, Span
from recommender.errors import FormatError
from recommender.formats.jsonl import read_lines
from recommender.markup_language import (
    Loss,
    SentenceMarkup,
    parse_markup,
    segmented,
    sentence_losses,
    sentence_markup,
    strip_markup,
)
from recommender.schema import Schema, load_schema
from recommender.text import tokenize

log = logging.getLogger(__name__)


def _records(doc: Document, sentences: list[SentenceMarkup]) -> list[dict[str, Any]]:
    if not doc.sentences:  # a blank note: one empty record, so that the note itself is not lost
        return [
            {
                "doc_id": doc.id,
                "sentence_index": 0,
                "begin": 0,
                "end": 0,
                "ner": "",
                "re": [],
                "doc_text": doc.text,
            }
        ]
    out = []
    for k, (segment_, sentence) in enumerate(zip(doc.sentences, sentences, strict=True)):
        record: dict[str, Any] = {
            "doc_id": doc.id,
            "sentence_index": k,
            "begin": segment_.begin,
            "end": segment_.end,
            "ner": sentence.ner,
            "re": [
                {
                    "entity": {"id": e.id, "label": e.label, "begin": e.begin, "end": e.end},
                    "input": source,
                    "target": target,
                }
                for e, source, target in sentence.examples
            ],
        }
        if k == 0:
            record["doc_text"] = doc.text
        out.append(record)
    return out


def records(doc: Document, schema: Schema | None = None) -> list[dict[str, Any]]:
    """The JSONL records of one document, one per sentence."""
    schema = schema or load_schema()
    doc = segmented(doc)
    return _records(doc, [sentence_markup(doc, s, schema) for s in doc.sentences])


# --- files ---------------------------------------------------------------------------------------


def _rebuild(doc_id: str, rows: list[dict[str, Any]]) -> Document:
    """A document from its records: exact with ``doc_text``, else from the markup's tokens."""
    if isinstance(rows[0].get("doc_text"), str):
        doc = Document(doc_id, rows[0]["doc_text"])
        doc.sentences = [Segment(int(r["begin"]), int(r["end"])) for r in rows]
        if any(not 0 <= s.begin <= s.end <= len(doc.text) for s in doc.sentences):
            raise FormatError(f"document [{doc_id}]: a sentence lies outside doc_text")
        doc.tokens = [t for s in doc.sentences for t in tokenize(doc.text, s.begin, s.end)]
        return doc
    lines = [" ".join(strip_markup(str(r.get("ner", "")))[0].split()) for r in rows]
    doc = Document(doc_id, "\n".join(lines))
    begin = 0
    for line in lines:
        doc.sentences.append(Segment(begin, begin + len(line)))
        for tok in line.split(" "):
            if tok:
                doc.tokens.append(Segment(begin, begin + len(tok)))
            begin += len(tok) + 1
    return doc


def _span(doc: Document, keys: dict[tuple[str, int, int], Span], key: tuple[str, int, int]) -> Span:
    if key not in keys:  # ids by count: the document is built here, and add_span rescans every id
        keys[key] = Span(f"T{len(doc.spans) + 1}", *key)
        doc.spans.append(keys[key])
    return keys[key]


def from_records(rows: list[dict[str, Any]], schema: Schema | None = None) -> Document:
    """One document from its sentence records (all with the same ``doc_id``, in order)."""
    schema = schema or load_schema()
    doc = _rebuild(str(rows[0]["doc_id"]), rows)
    keys: dict[tuple[str, int, int], Span] = {}
    pairs: set[tuple[str, str]] = set()
    for row, sentence in zip(rows, doc.sentences, strict=True):
        for key in parse_markup(str(row.get("ner", "")), doc, sentence, schema.entity_names):
            _span(doc, keys, key)
        for example in row.get("re") or []:
            label = str((example.get("entity") or {}).get("label", ""))
            found = parse_markup(str(example.get("input", "")), doc, sentence, [label])
            if not found:
                continue
            head = _span(doc, keys, found[0])
            for key in parse_markup(
                str(example.get("target", "")), doc, sentence, schema.allowed.get(label, ())
            ):
                tail = _span(doc, keys, key)
                if (head.id, tail.id) not in pairs:
                    pairs.add((head.id, tail.id))
                    doc.relations.append(Relation(f"R{len(doc.relations) + 1}", head.id, tail.id))
    return doc.validate(schema)


def read(path: Path) -> list[Document]:
    """Documents of a markup JSONL file (see the module docstring for what is restored)."""
    path = Path(path)
    groups: dict[str, list[dict[str, Any]]] = {}
    for lineno, row in read_lines(path):
        if not isinstance(row, dict) or "doc_id" not in row or not isinstance(row.get("ner"), str):
            raise FormatError(f"line {lineno}: not a markup record (needs doc_id and ner)", source=path)
        if not isinstance(row.get("doc_text"), str | None) or not all(
            isinstance(row.get(k), int) for k in ("begin", "end")
        ):
            raise FormatError(f"line {lineno}: begin/end must be integers", source=path)
        groups.setdefault(str(row["doc_id"]), []).append(row)
    schema = load_schema()
    try:
        return [from_records(rows, schema) for rows in groups.values()]
    except FormatError as e:
        raise FormatError(str(e), source=path) from None


def write(docs: Iterable[Document], path: Path) -> None:
    """Markup JSONL, one record per sentence; warns with the count of what the markup cannot carry."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = load_schema()
    lost: list[Loss] = []
    with path.open("w", encoding="utf-8") as f:
        for doc in docs:
            doc = segmented(doc)
            sentences = [sentence_markup(doc, s, schema) for s in doc.sentences]
            lost += sentence_losses(doc, sentences)
            for record in _records(doc, sentences):
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    if lost:
        log.warning(
            "%s: %d span(s) and %d relation(s) cannot be written as Kiwi markup (see markup_language.losses)",
            path,
            sum(1 for x in lost if x.kind == "span"),
            sum(1 for x in lost if x.kind == "relation"),
        )
