"""The Kiwi span markup (see ``../shared/reference/kiwi_instruction_format.md``), both directions.

The released Kiwi LLaMA models read and write one sentence at a time, as its tokens joined by single
spaces with ``<span class="TYPE">...</span>`` around mentions:

- NER form: every main entity (problem, test, drug, treatment) of the sentence wrapped;
- RE form, one example per main entity: the input wraps only that entity, the target wraps only the
  modifiers related to it (the plain sentence when it has none).

Tags sit directly around tokens (``<span class="drug">Cutivate</span> cream``); text is not
HTML-escaped, as in the Kiwi training data. This module is the markup language and its alignment back
to character offsets only; prompt templates belong to the LLaMA extractor.

What the markup cannot hold (reported by :func:`losses`, counted by :func:`write`): spans whose
boundaries fall inside a token, spans crossing a sentence boundary, spans crossing another span of the
same markup, modifiers with no relation to a main entity of their own sentence, and so the relations
of all of these. Scores and sources are not kept.

File format (``kiwi convert --to markup``): JSON lines, one record per sentence::

    {"doc_id", "sentence_index", "begin", "end", "ner": "<markup>",
     "re": [{"entity": {"id", "label", "begin", "end"}, "input": "<markup>", "target": "<markup>"}]}

The first record of each document also carries ``doc_text``, the note itself, so :func:`read`
restores exact offsets. Without it (records made elsewhere), :func:`read` rebuilds the text from the
markup: tokens joined by single spaces, sentences by newlines; that text is whitespace-normalised.
"""

from __future__ import annotations

import bisect
import html
import json
import logging
import re
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from recommender.document import Document, Relation, Segment, Span
from recommender.errors import FormatError
from recommender.formats.jsonl import read_lines
from recommender.schema import Schema, load_schema
from recommender.text import segment, tokenize

log = logging.getLogger(__name__)

# Open and close tags as models write them, loosely: any spacing, quoting or letter case.
_TAG = re.compile(r"<\s*(/)?\s*span\b([^<>]*)>", re.IGNORECASE)
_CLASS = re.compile(r"""class\s*=\s*["']?\s*([^"'\s>]+)""", re.IGNORECASE)
_NOISE = re.compile(r"<\s*/?\s*(?:EOS|s)\s*>", re.IGNORECASE)  # end-of-sequence markers


@dataclass(frozen=True)
class Loss:
    """A span or relation that a token-level format cannot express, and why."""

    doc_id: str
    kind: str  # "span" or "relation"
    item_id: str
    reason: str


# --- writing markup ------------------------------------------------------------------------------


def sentence_tokens(doc: Document, sentence: Segment) -> list[Segment]:
    """The tokens inside ``sentence``; segments the document first when it has no tokens."""
    if not doc.tokens:
        segment(doc)
    lo = bisect.bisect_left(doc.tokens, sentence.begin, key=lambda t: t.begin)
    hi = bisect.bisect_left(doc.tokens, sentence.end, lo, key=lambda t: t.begin)
    return [t for t in doc.tokens[lo:hi] if t.end <= sentence.end]


def wrap(text: str, tokens: list[Segment], spans: Iterable[Span]) -> tuple[str, dict[str, str]]:
    """Tokens joined by spaces with ``spans`` wrapped; returns the markup and {lost span id: reason}."""
    starts = {t.begin: i for i, t in enumerate(tokens)}
    ends = {t.end: i for i, t in enumerate(tokens)}
    lost: dict[str, str] = {}
    placed: list[tuple[int, int, Span]] = []
    for s in spans:
        i, j = starts.get(s.begin), ends.get(s.end)
        if i is None or j is None:
            lost[s.id] = "boundary inside a token"
        else:
            placed.append((i, j, s))
    placed.sort(key=lambda p: (p[0], -p[1]))
    opens: dict[int, list[str]] = defaultdict(list)
    closes: dict[int, int] = defaultdict(int)
    stack: list[int] = []  # token index where each open span ends
    for i, j, s in placed:
        while stack and stack[-1] < i:
            stack.pop()
        if stack and j > stack[-1]:
            lost[s.id] = "crosses another span"
            continue
        stack.append(j)
        opens[i].append(s.label)
        closes[j] += 1
    parts = [
        "".join(f'<span class="{label}">' for label in opens[k])
        + text[t.begin : t.end]
        + "</span>" * closes[k]
        for k, t in enumerate(tokens)
    ]
    return " ".join(parts), lost


def _inside(span: Span, sentence: Segment) -> bool:
    return sentence.begin <= span.begin and span.end <= sentence.end


def ner_markup(doc: Document, sentence: Segment, schema: Schema | None = None) -> str:
    """The NER form of one sentence: its main entities wrapped."""
    schema = schema or load_schema()
    entities = [s for s in doc.spans if schema.is_entity(s.label) and _inside(s, sentence)]
    return wrap(doc.text, sentence_tokens(doc, sentence), entities)[0]


def re_examples(
    doc: Document, sentence: Segment, schema: Schema | None = None
) -> list[tuple[Span, str, str]]:
    """The RE form of one sentence: (entity, input, target) for each main entity that can be wrapped."""
    return _sentence(doc, sentence, schema or load_schema()).examples


@dataclass
class _Sentence:
    """One sentence in markup, and which span and relation ids it carries."""

    ner: str
    examples: list[tuple[Span, str, str]]
    spans: set[str]
    relations: set[str]
    reasons: dict[str, str]  # span id -> why a wrap lost it


def _sentence(doc: Document, sentence: Segment, schema: Schema) -> _Sentence:
    tokens = sentence_tokens(doc, sentence)
    index = doc.span_index()
    entities = [s for s in doc.spans if schema.is_entity(s.label) and _inside(s, sentence)]
    ner, lost = wrap(doc.text, tokens, entities)
    out = _Sentence(ner, [], set(), set(), dict(lost))
    for entity in entities:
        if entity.id in lost:
            continue
        out.spans.add(entity.id)
        relations = [r for r in doc.relations if r.head == entity.id and _inside(index[r.tail], sentence)]
        mods = list({r.tail: index[r.tail] for r in relations}.values())
        target, mod_lost = wrap(doc.text, tokens, mods)
        out.reasons |= mod_lost
        out.examples.append((entity, wrap(doc.text, tokens, [entity])[0], target))
        for r in relations:
            if r.tail not in mod_lost:
                out.spans.add(r.tail)
                out.relations.add(r.id)
    return out


def segmented(doc: Document) -> Document:
    """``doc`` itself when it has sentences and tokens, else a segmented shallow copy."""
    return doc if doc.sentences and doc.tokens else segment(replace(doc, sentences=[], tokens=[]))


def _losses(doc: Document, sentences: list[_Sentence]) -> list[Loss]:
    spans = set().union(*(s.spans for s in sentences))
    relations = set().union(*(s.relations for s in sentences))
    reasons = {k: v for s in sentences for k, v in s.reasons.items()}
    starts = {t.begin for t in doc.tokens}
    ends = {t.end for t in doc.tokens}
    out = []
    for s in doc.spans:
        if s.id in spans:
            continue
        if s.begin not in starts or s.end not in ends:
            reason = "boundary inside a token"
        elif s.id in reasons:
            reason = reasons[s.id]
        elif not any(_inside(s, sent) for sent in doc.sentences):
            reason = "crosses a sentence boundary"
        else:
            reason = "modifier without a relation to a main entity of its sentence"
        out.append(Loss(doc.id, "span", s.id, reason))
    out += [
        Loss(doc.id, "relation", r.id, "entity or modifier not expressed")
        for r in doc.relations
        if r.id not in relations
    ]
    return out


def losses(doc: Document, schema: Schema | None = None) -> list[Loss]:
    """The spans and relations of ``doc`` that its Kiwi markup cannot carry, with the reason."""
    schema = schema or load_schema()
    doc = segmented(doc)
    return _losses(doc, [_sentence(doc, s, schema) for s in doc.sentences])


def _records(doc: Document, sentences: list[_Sentence]) -> list[dict[str, Any]]:
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
    return _records(doc, [_sentence(doc, s, schema) for s in doc.sentences])


# --- reading markup ------------------------------------------------------------------------------


def strip_markup(markup: str) -> tuple[str, list[tuple[str | None, int, int]]]:
    """Plain text of a markup string and its (class, begin, end) spans in that text.

    Tolerant of what a model may produce: any tag spacing or case, HTML-escaped characters, nesting,
    close tags without an open tag (ignored) and open tags never closed (dropped).
    """
    plain: list[str] = []
    length = 0
    stack: list[tuple[str | None, int]] = []
    spans: list[tuple[str | None, int, int]] = []
    pos = 0
    markup = _NOISE.sub(" ", markup)
    for m in _TAG.finditer(markup):
        piece = html.unescape(markup[pos : m.start()])
        plain.append(piece)
        length += len(piece)
        pos = m.end()
        if m.group(1):  # close tag
            if stack:
                label, begin = stack.pop()
                spans.append((label, begin, length))
        else:
            cls = _CLASS.search(m.group(2))
            stack.append((cls.group(1).lower() if cls else None, length))
    plain.append(html.unescape(markup[pos:]))
    return "".join(plain), spans


def _fold(text: str) -> str:
    """Lower case, unless that changes the length (a few letters, e.g. U+0130, lower to two)."""
    low = text.lower()
    return low if len(low) == len(text) else text


def parse_markup(
    markup: str, doc: Document, sentence: Segment, allowed_labels: Collection[str]
) -> list[tuple[str, int, int]]:
    """The (label, begin, end) spans of a markup string, in character offsets of ``doc.text``.

    The markup's text is aligned to the sentence ignoring whitespace and case, so extra or missing
    spaces and small changes of wording still align; spans are widened to whole tokens, and spans
    with a label outside ``allowed_labels`` or with no aligned character are dropped. Never raises on
    bad model output: it returns what it can align.
    """
    if not isinstance(markup, str) or not markup:
        return []
    plain, raw = strip_markup(markup)
    allowed = {label.lower() for label in allowed_labels}
    raw = [(label, b, e) for label, b, e in raw if label in allowed and e > b]
    if not raw:
        return []
    p_pos = [i for i, c in enumerate(plain) if not c.isspace()]
    s_pos = [i for i in range(sentence.begin, sentence.end) if not doc.text[i].isspace()]
    p_str = _fold("".join(plain[i] for i in p_pos))
    s_str = _fold("".join(doc.text[i] for i in s_pos))
    if p_str == s_str:
        mapping = dict(enumerate(range(len(s_pos))))
    else:
        matcher = SequenceMatcher(None, p_str, s_str, autojunk=False)
        mapping = {a + k: b + k for a, b, n in matcher.get_matching_blocks() for k in range(n)}
    tokens = sentence_tokens(doc, sentence)
    out = set()
    for label, b, e in raw:
        inside = [
            mapping[k]
            for k in range(bisect.bisect_left(p_pos, b), bisect.bisect_left(p_pos, e))
            if k in mapping
        ]
        if not inside:
            continue
        begin, end = s_pos[inside[0]], s_pos[inside[-1]] + 1
        for t in tokens:  # a model may split a token: keep whole tokens
            if t.begin < begin < t.end:
                begin = t.begin
            if t.begin < end < t.end:
                end = t.end
        out.add((label, begin, end))
    return sorted(out, key=lambda x: (x[1], -x[2], x[0]))


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
            sentences = [_sentence(doc, s, schema) for s in doc.sentences]
            lost += _losses(doc, sentences)
            for record in _records(doc, sentences):
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    if lost:
        log.warning(
            "%s: %d span(s) and %d relation(s) cannot be written as Kiwi markup (see markup.losses)",
            path,
            sum(1 for x in lost if x.kind == "span"),
            sum(1 for x in lost if x.kind == "relation"),
        )
