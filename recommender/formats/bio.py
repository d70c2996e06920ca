"""BIO / CoNLL: one token a line, a blank line between sentences, ``-DOCSTART- <doc id>`` per document.

Each token line has three tab-separated columns::

    chest<TAB>B-problem<TAB>B-bodyloc
    pain<TAB>I-problem<TAB>O

Modifiers usually sit inside main entities ("chest" in "chest pain"), which one BIO column cannot
hold, so main entities take the second column and modifiers the third. What BIO cannot express is
reported by :func:`losses` and counted by :func:`write`: spans whose boundaries fall inside a token,
spans crossing a sentence boundary, spans overlapping an earlier span of the same column, and every
relation (BIO has no way to link two spans).

:func:`read` accepts two or three columns and rebuilds each note as its tokens joined by single
spaces, sentences by newlines: the text is whitespace-normalised, so offsets differ from the
original note even where the spans are the same tokens.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from recommender.document import Document, Segment, Span
from recommender.errors import FormatError, NotFoundError
from recommender.markup_language import Loss, segmented, sentence_tokens
from recommender.schema import Schema, load_schema

log = logging.getLogger(__name__)

DOCSTART = "-DOCSTART-"
_TAG = re.compile(r"^([BI])-(\S+)$")


def _tags(doc: Document, sentence: Segment, spans: list[Span]) -> tuple[list[str], dict[str, str]]:
    """BIO tags of one column for the sentence's tokens, and {lost span id: reason}."""
    tokens = sentence_tokens(doc, sentence)
    starts = {t.begin: i for i, t in enumerate(tokens)}
    ends = {t.end: i for i, t in enumerate(tokens)}
    tags = ["O"] * len(tokens)
    lost: dict[str, str] = {}
    for s in sorted(spans, key=lambda s: (s.begin, -s.end)):
        i, j = starts.get(s.begin), ends.get(s.end)
        if i is None or j is None:
            lost[s.id] = "boundary inside a token"
        elif any(tag != "O" for tag in tags[i : j + 1]):
            lost[s.id] = "overlaps another span of its column"
        else:
            tags[i : j + 1] = [f"B-{s.label}"] + [f"I-{s.label}"] * (j - i)
    return tags, lost


@dataclass
class _Columns:
    lines: list[list[tuple[str, str, str]]] = field(default_factory=list)  # per sentence
    lost: list[Loss] = field(default_factory=list)


def _columns(doc: Document, schema: Schema) -> _Columns:
    out = _Columns()
    placed: set[str] = set()
    for sentence in doc.sentences:
        inside = [s for s in doc.spans if sentence.begin <= s.begin and s.end <= sentence.end]
        ent_tags, ent_lost = _tags(doc, sentence, [s for s in inside if schema.is_entity(s.label)])
        mod_tags, mod_lost = _tags(doc, sentence, [s for s in inside if not schema.is_entity(s.label)])
        reasons = ent_lost | mod_lost
        out.lost += [Loss(doc.id, "span", sid, reason) for sid, reason in reasons.items()]
        placed |= {s.id for s in inside} - reasons.keys()
        tokens = sentence_tokens(doc, sentence)
        out.lines.append([(doc.covered(t), e, m) for t, e, m in zip(tokens, ent_tags, mod_tags, strict=True)])
    out.lost += [
        Loss(doc.id, "span", s.id, "crosses a sentence boundary")
        for s in doc.spans
        if s.id not in placed and not any(x.item_id == s.id for x in out.lost)
    ]
    out.lost += [Loss(doc.id, "relation", r.id, "BIO has no relations") for r in doc.relations]
    return out


def losses(doc: Document, schema: Schema | None = None) -> list[Loss]:
    """The spans and relations of ``doc`` that BIO cannot carry, with the reason."""
    return _columns(segmented(doc), schema or load_schema()).lost


def write(docs: Iterable[Document], path: Path) -> None:
    """One CoNLL file for all documents; warns once with the count of what BIO cannot carry."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = load_schema()
    lost: list[Loss] = []
    with path.open("w", encoding="utf-8") as f:
        for doc in docs:
            columns = _columns(segmented(doc), schema)
            lost += columns.lost
            f.write(f"{DOCSTART} {doc.id}\n\n")
            for sentence in columns.lines:
                f.writelines(f"{tok}\t{ent}\t{mod}\n" for tok, ent, mod in sentence)
                f.write("\n")
    relations = sum(1 for x in lost if x.kind == "relation")
    if lost:
        log.warning(
            "%s: %d span(s) cannot be written as BIO and %d relation(s) are dropped (BIO has none)",
            path,
            len(lost) - relations,
            relations,
        )


class _Builder:
    """Accumulates one document while reading."""

    def __init__(self, doc_id: str) -> None:
        self.doc = Document(doc_id, "")
        self.parts: list[str] = []
        self.length = 0
        self.sentence_start: int | None = None
        self.open: dict[int, Span] = {}  # column -> span being extended

    def token(self, text: str, tags: list[str]) -> None:
        if self.parts:
            self.parts.append("\n" if self.sentence_start is None else " ")
            self.length += 1
        if self.sentence_start is None:
            self.sentence_start = self.length
        token = Segment(self.length, self.length + len(text))
        self.parts.append(text)
        self.length = token.end
        self.doc.tokens.append(token)
        for column, tag in enumerate(tags):
            self._tag(column, tag, token)

    def _tag(self, column: int, tag: str, token: Segment) -> None:
        m = _TAG.match(tag)
        current = self.open.get(column)
        if m and m.group(1) == "I" and current is not None and current.label == m.group(2):
            current.end = token.end
            return
        self.open.pop(column, None)
        if m:  # B-, or an I- that starts a span (tolerated, as many taggers emit it)
            self.open[column] = self.doc.add_span(m.group(2), token.begin, token.end)

    def end_sentence(self) -> None:
        if self.sentence_start is not None:
            self.doc.sentences.append(Segment(self.sentence_start, self.length))
        self.sentence_start = None
        self.open.clear()

    def finish(self, schema: Schema) -> Document:
        self.end_sentence()
        self.doc.text = "".join(self.parts)
        unknown = sorted({s.label for s in self.doc.spans} - set(schema.label_names))
        if unknown:
            log.warning("document [%s]: labels %s are not in the schema; dropped", self.doc.id, unknown)
            self.doc.spans = [s for s in self.doc.spans if s.label in schema.label_names]
        return self.doc.validate(schema)


def read(path: Path) -> list[Document]:
    """Documents of a BIO/CoNLL file (see the module docstring for what is rebuilt)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError("no such file", source=path)
    schema = load_schema()
    docs: list[Document] = []
    current: _Builder | None = None
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith(DOCSTART):
            if current is not None:
                docs.append(current.finish(schema))
            current = _Builder(line[len(DOCSTART) :].strip() or f"{path.stem}-{len(docs) + 1}")
            continue
        if not line.strip():
            if current is not None:
                current.end_sentence()
            continue
        cols = line.split("\t")
        if len(cols) not in (2, 3) or not cols[0]:
            raise FormatError(
                f"line {lineno}: expected token<TAB>tag[<TAB>tag], got {len(cols)} column(s)", source=path
            )
        bad = [t for t in cols[1:] if t != "O" and not _TAG.match(t)]
        if bad:
            raise FormatError(f"line {lineno}: not a BIO tag [{bad[0]}]", source=path)
        if current is None:
            current = _Builder(path.stem)
        current.token(cols[0], cols[1:])
    if current is not None:
        docs.append(current.finish(schema))
    return docs
