"""brat standoff: ``NAME.txt`` + ``NAME.ann`` per note (the format of the MTSamples Kiwi corpus)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

from recommender.document import Document, Relation, Span
from recommender.errors import DocumentError, FormatError, NotFoundError

log = logging.getLogger(__name__)

_TEXT_BOUND = re.compile(r"^(T\d+)\t(\S+) (\d+ \d+(?:;\d+ \d+)*)\t?(.*)$")
_RELATION = re.compile(r"^(R\d+)\t(\S+) Arg1:(T\d+) Arg2:(T\d+)\s*$")
_LABEL = re.compile(r"\S+")


def _one_line(covered: str) -> str:
    """The covered text as brat shows it (informative only: offsets are what is read)."""
    return covered.replace("\r", " ").replace("\n", " ")


def parse(text: str, ann: str, doc_id: str, *, source: str | Path | None = None) -> Document:
    """One document from the contents of its ``.txt`` and ``.ann`` files."""
    doc = Document(id=doc_id, text=text)
    where = source or doc_id
    # Only "\n" ends a line: splitlines() would also break at characters a note may hold (U+2028...).
    for lineno, line in enumerate(ann.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip() or line[0] in "#AMNE*":  # notes, attributes, events: not in the schema
            continue
        if m := _TEXT_BOUND.match(line):
            sid, label, frags, _ = m.groups()
            offsets = [int(x) for frag in frags.split(";") for x in frag.split()]
            if ";" in frags:
                log.warning("%s:%d: discontinuous span %s kept as one range", where, lineno, sid)
            doc.spans.append(Span(sid, label, min(offsets), max(offsets)))
        elif m := _RELATION.match(line):
            rid, label, head, tail = m.groups()
            doc.relations.append(Relation(rid, head, tail, label))
        else:
            # A stray line (one exists in the public corpus) loses nothing that brat could show.
            log.warning("%s:%d: line is not a brat text-bound or relation annotation; skipped", where, lineno)
    try:
        # Labels outside the schema (a team's own) are kept; training ignores them.
        return doc.validate(strict_labels=False)
    except DocumentError as e:
        raise DocumentError(str(e), source=source) from None


def _brat_ids(ids: list[str], prefix: str) -> dict[str, str]:
    """Keep ``T<n>``/``R<n>`` ids; renumber all of them when any is foreign (e.g. Label Studio regions)."""
    if all(re.fullmatch(rf"{prefix}\d+", i) for i in ids) and len(set(ids)) == len(ids):
        return {i: i for i in ids}
    return {i: f"{prefix}{n}" for n, i in enumerate(ids, 1)}


def _label(label: str, item: str, doc: Document) -> str:
    if not _LABEL.fullmatch(label):
        raise FormatError(f"{item} of document [{doc.id}] has label [{label}], which brat cannot store")
    return label


def format_ann(doc: Document) -> str:
    """The ``.ann`` text; FormatError for a label brat cannot store (empty, or with whitespace)."""
    for s in doc.spans:
        _label(s.label, f"span [{s.id}]", doc)
    for r in doc.relations:
        _label(r.label, f"relation [{r.id}]", doc)
    span_ids = _brat_ids([s.id for s in doc.spans], "T")
    rel_ids = _brat_ids([r.id for r in doc.relations], "R")
    lines = [
        f"{span_ids[s.id]}\t{s.label} {s.begin} {s.end}\t{_one_line(doc.text[s.begin : s.end])}"
        for s in doc.spans
    ]
    lines += [
        f"{rel_ids[r.id]}\t{r.label} Arg1:{span_ids[r.head]} Arg2:{span_ids[r.tail]}" for r in doc.relations
    ]
    return "\n".join(lines) + ("\n" if lines else "")


def read_file(txt: Path) -> Document:
    ann = txt.with_suffix(".ann")
    try:
        # Bytes decoded as they are: universal newlines would turn "\r\n" into "\n" and shift offsets.
        text = txt.read_bytes().decode("utf-8")
        ann_text = ann.read_bytes().decode("utf-8") if ann.exists() else ""
    except UnicodeDecodeError as e:
        raise FormatError(f"not UTF-8 text ({e.reason})", source=txt) from None
    return parse(text, ann_text, txt.stem, source=ann)


def read(path: Path) -> list[Document]:
    """All notes of a brat folder (``.txt`` files, with their ``.ann`` when present), or one note."""
    path = Path(path)
    if path.is_file():
        return [read_file(path.with_suffix(".txt"))]
    if not path.is_dir():
        raise NotFoundError("no such file or folder", source=path)
    files = sorted(path.glob("*.txt"))
    if not files:
        raise FormatError("no .txt files: not a brat folder", source=path)
    return [read_file(f) for f in files]


def write(docs: Iterable[Document], path: Path) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for doc in docs:
        (path / f"{doc.id}.txt").write_text(doc.text, encoding="utf-8", newline="")
        (path / f"{doc.id}.ann").write_text(format_ann(doc), encoding="utf-8", newline="")
