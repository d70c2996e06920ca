"""The Kiwi span markup language (see ``../shared/reference/kiwi_instruction_format.md``): wrap, parse, align.

The released Kiwi LLaMA models read and write one sentence at a time, as its tokens joined by single
spaces with ``<span class="TYPE">...</span>`` around mentions:

- NER form: every main entity (problem, test, drug, treatment) of the sentence wrapped;
- RE form, one example per main entity: the input wraps only that entity, the target wraps only the
  modifiers related to it (the plain sentence when it has none).

Tags sit directly around tokens (``<span class="drug">Cutivate</span> cream``); text is not
HTML-escaped, as in the Kiwi training data. Both the markup file format (``formats/markup.py``) and
the LLaMA extractor build on this module, so neither imports the other.

What the markup cannot hold (reported by :func:`losses`): spans whose boundaries fall inside a token,
spans crossing a sentence boundary, spans crossing another span of the same markup, modifiers with no
relation to a main entity of their own sentence, and so the relations of all of these. Scores and
sources are not kept.
"""

from __future__ import annotations

import bisect
import html
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from difflib import SequenceMatcher

from recommender.document import Document, Segment, Span
from recommender.schema import Schema, load_schema
from recommender.text import segment

log = logging.getLogger(__name__)

# Open and close tags as models write them, loosely: any spacing, quoting or letter case.
_TAG = re.compile(r"<\s*(?P<close>/)?\s*span\b(?P<attrs>[^<>]*)>", re.IGNORECASE)
_CLASS = re.compile(r"""class\s*=\s*["']?\s*([^"'\s>]+)""", re.IGNORECASE)
_NOISE = r"<\s*/?\s*(?:EOS|s)\s*>"  # end-of-sequence markers
_TOKEN = re.compile(rf"(?P<noise>{_NOISE})|{_TAG.pattern}", re.IGNORECASE)


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
    seen: set[tuple[str, int, int]] = set()
    for i, j, s in placed:
        while stack and stack[-1] < i:
            stack.pop()
        if stack and j > stack[-1]:
            lost[s.id] = "crosses another span"
            continue
        if (s.label, i, j) in seen:  # markup reads one span per label and tokens
            lost[s.id] = "duplicates another span"
            continue
        seen.add((s.label, i, j))
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
    return sentence_markup(doc, sentence, schema or load_schema()).examples


@dataclass
class SentenceMarkup:
    """One sentence in markup, and which span and relation ids it carries."""

    ner: str
    examples: list[tuple[Span, str, str]]
    spans: set[str]
    relations: set[str]
    reasons: dict[str, str]  # span id -> why a wrap lost it


def sentence_markup(doc: Document, sentence: Segment, schema: Schema) -> SentenceMarkup:
    tokens = sentence_tokens(doc, sentence)
    index = doc.span_index()
    entities = [s for s in doc.spans if schema.is_entity(s.label) and _inside(s, sentence)]
    ner, lost = wrap(doc.text, tokens, entities)
    out = SentenceMarkup(ner, [], set(), set(), dict(lost))
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


def sentence_losses(doc: Document, sentences: list[SentenceMarkup]) -> list[Loss]:
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
    return sentence_losses(doc, [sentence_markup(doc, s, schema) for s in doc.sentences])


# --- reading markup ------------------------------------------------------------------------------


# What a model's output can get wrong, by kind (``Document.drops`` counts them per predicted note).
UNKNOWN_TAG = "unknown tag"  # an opening tag whose class is not allowed here, or has none
UNBALANCED_TAG = "unbalanced tag"  # a closing tag with no open span, or an opening tag never closed
EMPTY_SPAN = "empty span"  # a span around no text
UNALIGNED_SPAN = "unaligned span"  # a span whose text is not (mostly) in the sentence: invented words
REPEATED_SPAN = "repeated entity"  # the same label over the same tokens twice (repeated output)


@dataclass(frozen=True)
class MarkedSpan:
    """A span read from markup: label, offsets in the note, and where its tags sit in the markup."""

    label: str
    begin: int
    end: int
    markup_begin: int  # start of the opening tag in the markup string
    markup_end: int  # end of the closing tag


@dataclass
class ReadMarkup:
    spans: list[MarkedSpan]
    drops: Counter[str]


def _scan(markup: str) -> tuple[str, list[tuple[str | None, int, int, int, int]], Counter[str]]:
    """Plain text, (class, plain begin, plain end, markup begin, markup end) spans and unbalanced tags."""
    plain: list[str] = []
    length = 0
    stack: list[tuple[str | None, int, int]] = []
    spans: list[tuple[str | None, int, int, int, int]] = []
    drops: Counter[str] = Counter()
    pos = 0
    for m in _TOKEN.finditer(markup):
        piece = html.unescape(markup[pos : m.start()])
        plain.append(piece)
        length += len(piece)
        pos = m.end()
        if m.group("noise") is not None:  # an end-of-sequence marker reads as a space
            plain.append(" ")
            length += 1
        elif m.group("close"):
            if stack:
                label, begin, at = stack.pop()
                spans.append((label, begin, length, at, m.end()))
            else:
                drops[UNBALANCED_TAG] += 1
        else:
            cls = _CLASS.search(m.group("attrs"))
            stack.append((cls.group(1).lower() if cls else None, length, m.start()))
    plain.append(html.unescape(markup[pos:]))
    drops[UNBALANCED_TAG] += len(stack)
    return "".join(plain), spans, +drops


def strip_markup(markup: str) -> tuple[str, list[tuple[str | None, int, int]]]:
    """Plain text of a markup string and its (class, begin, end) spans in that text.

    Tolerant of what a model may produce: any tag spacing or case, HTML-escaped characters, nesting,
    close tags without an open tag (ignored) and open tags never closed (dropped).
    """
    plain, spans, _ = _scan(markup)
    return plain, [(label, b, e) for label, b, e, _, _ in spans]


def _fold(text: str) -> str:
    """Lower case, unless that changes the length (a few letters, e.g. U+0130, lower to two)."""
    low = text.lower()
    return low if len(low) == len(text) else text


def read_markup(markup: str, doc: Document, sentence: Segment, allowed_labels: Collection[str]) -> ReadMarkup:
    """The spans of a model's markup output in character offsets of ``doc.text``, and what was dropped.

    The markup's text is aligned to the sentence ignoring whitespace and case, so extra or missing
    spaces and small changes of wording still align; spans are widened to whole tokens. Dropped, and
    counted by kind: tags with a class outside ``allowed_labels`` (or none), unbalanced tags, empty
    spans, spans of which less than half the characters align to the sentence or whose aligned text
    is spread over more than twice their length (invented or moved words), and repeats of a span
    already read. Never raises on bad model output.
    """
    drops: Counter[str] = Counter()
    if not isinstance(markup, str) or not markup:
        return ReadMarkup([], drops)
    plain, raw, drops = _scan(markup)
    allowed = {label.lower() for label in allowed_labels}
    kept = []
    for label, b, e, mb, me in raw:
        if label not in allowed:
            drops[UNKNOWN_TAG] += 1
        elif not plain[b:e].strip():
            drops[EMPTY_SPAN] += 1
        else:
            kept.append((label, b, e, mb, me))
    if not kept:
        return ReadMarkup([], drops)
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
    seen: set[tuple[str, int, int]] = set()
    out: list[MarkedSpan] = []
    for label, b, e, mb, me in sorted(kept, key=lambda x: x[3]):
        chars = range(bisect.bisect_left(p_pos, b), bisect.bisect_left(p_pos, e))
        inside = [mapping[k] for k in chars if k in mapping]
        if not inside or 2 * len(inside) < len(chars) or inside[-1] - inside[0] + 1 > 2 * len(chars):
            drops[UNALIGNED_SPAN] += 1
            continue
        begin, end = s_pos[inside[0]], s_pos[inside[-1]] + 1
        for t in tokens:  # a model may split a token: keep whole tokens
            if t.begin < begin < t.end:
                begin = t.begin
            if t.begin < end < t.end:
                end = t.end
        if (label, begin, end) in seen:
            drops[REPEATED_SPAN] += 1
            continue
        seen.add((label, begin, end))
        out.append(MarkedSpan(label, begin, end, mb, me))
    out.sort(key=lambda x: (x.begin, -x.end, x.label))
    return ReadMarkup(out, drops)


def parse_markup(
    markup: str, doc: Document, sentence: Segment, allowed_labels: Collection[str]
) -> list[tuple[str, int, int]]:
    """The (label, begin, end) spans of a markup string, in character offsets of ``doc.text``
    (:func:`read_markup` without the drop counts)."""
    return [(s.label, s.begin, s.end) for s in read_markup(markup, doc, sentence, allowed_labels).spans]
