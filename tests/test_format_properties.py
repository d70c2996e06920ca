"""Property tests: generated documents through every pair of formats come back exactly; what a format
cannot store (brat: a label with a space; Label Studio: the schema's relation from a modifier to a main
entity) is refused by name, each tested on its own; the token formats keep what they can express and
report the rest.

The documents have labels outside the schema, text outside the BMP, CRLF line ends, zero-width and
combining characters, overlapping and nested spans, and relations both ways between the same spans
(test_the_generator_reaches_the_hard_cases checks that the generator makes each).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from recommender import markup_language
from recommender.document import Document, Relation, Span
from recommender.errors import DocumentError, FormatError
from recommender.formats import bio, brat, jsonl, labelstudio, xmi
from recommender.formats import markup as markup_format
from recommender.schema import load_schema

SCHEMA = load_schema()
PIECES = [
    "chest pain",
    "denies",
    "fever",
    " ",
    "  ",
    "\r\n",
    "\n",
    "\t",
    ".",
    "5mg",
    "é",
    "e\u0301",  # combining
    "\u200b",
    "\u200d",
    "\ufeff",  # zero-width
    "😀",
    "𝔸",
    "👩\u200d⚕️",  # outside the BMP, a ZWJ sequence
    "\u2028",
    "\x85",  # line breaks that str.splitlines() knows and formats must not
]
OWN_LABELS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ_-0123456789äß", min_size=1, max_size=12)
BRAT_LABELS = st.sampled_from(SCHEMA.label_names) | OWN_LABELS  # every label brat can store
ANY_LABELS = BRAT_LABELS | st.just("has space")  # brat refuses a label with whitespace
RELATION_LABELS = st.just(SCHEMA.relation) | OWN_LABELS


def _relation(doc: Document, head: Span, tail: Span, label: str) -> None:
    # Label Studio carries the schema's relation from the main entity only (its refusal is tested below)
    if label == SCHEMA.relation and SCHEMA.is_modifier(head.label) and SCHEMA.is_entity(tail.label):
        head, tail = tail, head
    doc.relations.append(Relation(doc.new_relation_id(), head.id, tail.id, label))


@st.composite
def documents(draw: st.DrawFn, labels: st.SearchStrategy[str] = BRAT_LABELS) -> Document:
    """Documents every lossless format can carry when ``labels`` are those brat can store."""
    text = "".join(draw(st.lists(st.sampled_from(PIECES), min_size=1, max_size=30)))
    doc = Document("d0", text)
    n = len(text)
    for _ in range(draw(st.integers(0, 8)) if n > 1 else 0):
        begin = draw(st.integers(0, n - 1))
        end = draw(st.integers(begin + 1, min(n, begin + 25)))
        doc.add_span(draw(labels), begin, end)
    if doc.spans:
        for _ in range(draw(st.integers(0, 6))):
            head, tail = draw(st.sampled_from(doc.spans)), draw(st.sampled_from(doc.spans))
            _relation(doc, head, tail, draw(RELATION_LABELS))
            if draw(st.booleans()):  # the same pair the other way round
                _relation(doc, tail, head, draw(RELATION_LABELS))
    return doc


def _some_span(draw: st.DrawFn, doc: Document, label: str) -> Span:
    begin = draw(st.integers(0, len(doc.text) - 1))
    return doc.add_span(label, begin, draw(st.integers(begin + 1, len(doc.text))))


@st.composite
def documents_brat_cannot_store(draw: st.DrawFn) -> Document:
    """A generated document with one span labelled "has space" somewhere among its spans."""
    doc = draw(documents())
    _some_span(draw, doc, "has space")
    doc.spans.insert(draw(st.integers(0, len(doc.spans) - 1)), doc.spans.pop())
    return doc


@st.composite
def documents_label_studio_cannot_store(draw: st.DrawFn) -> Document:
    """A generated document plus the schema's relation from a modifier to a main entity."""
    doc = draw(documents())
    modifier = _some_span(draw, doc, draw(st.sampled_from(SCHEMA.label_names).filter(SCHEMA.is_modifier)))
    entity = _some_span(draw, doc, draw(st.sampled_from(SCHEMA.label_names).filter(SCHEMA.is_entity)))
    doc.relations.append(Relation("R999", modifier.id, entity.id, SCHEMA.relation))
    doc.relations.insert(draw(st.integers(0, len(doc.relations) - 1)), doc.relations.pop())
    return doc


def canonical(doc: Document) -> tuple[str, Counter, Counter]:
    """What a lossless format keeps: the text, the spans and the relations between them (not ids or order)."""
    index = doc.span_index()
    return (
        doc.text,
        Counter(s.key for s in doc.spans),
        Counter((index[r.head].key, index[r.tail].key, r.label) for r in doc.relations),
    )


LOSSLESS: dict[str, tuple[ModuleType, str]] = {
    "brat": (brat, "brat"),
    "xmi": (xmi, "xmi"),
    "labelstudio": (labelstudio, "tasks.json"),
    "jsonl": (jsonl, "docs.jsonl"),
}


def through(doc: Document, name: str, folder: Path) -> Document:
    module, target = LOSSLESS[name]
    module.write([doc], folder / target)
    (back,) = module.read(folder / target)
    return back


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PAIRS = [(a, b) for a in LOSSLESS for b in LOSSLESS]


def round_trips(doc: Document, pairs: list[tuple[str, str]]) -> None:
    expected = canonical(doc)
    with tempfile.TemporaryDirectory() as tmp:
        for k, (first, second) in enumerate(pairs):
            folder = Path(tmp) / str(k)
            back = through(through(doc, first, folder / "a"), second, folder / "b")
            assert canonical(back) == expected, f"{first} -> {second}"


@FAST
@given(documents())
def test_every_pair_of_lossless_formats_round_trips(doc: Document) -> None:
    """Labels brat can store: every pair, brat's included, keeps text, spans and relations exactly."""
    round_trips(doc, PAIRS)


@FAST
@given(documents(ANY_LABELS))
def test_the_formats_other_than_brat_carry_any_label(doc: Document) -> None:
    round_trips(doc, [(a, b) for a, b in PAIRS if "brat" not in (a, b)])


@FAST
@given(documents_brat_cannot_store())
def test_brat_refuses_a_label_with_a_space_by_name(doc: Document) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(FormatError, match=r"\[has space\]"):
        brat.write([doc], Path(tmp))


@FAST
@given(documents_label_studio_cannot_store())
def test_label_studio_refuses_the_schema_relation_from_a_modifier_by_name(doc: Document) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(DocumentError, match=r"\[R999\]"):
        labelstudio.write([doc], Path(tmp) / "tasks.json")


def _found(condition: Callable[[Document], bool], strategy: st.SearchStrategy[Document]) -> Document:
    """The first generated document that meets ``condition`` (hypothesis.find fails when none does)."""
    return find(
        strategy, condition, settings=settings(max_examples=500, database=None, phases=[Phase.generate])
    )


def _pairs(doc: Document) -> set[tuple[str, str]]:
    return {(r.head, r.tail) for r in doc.relations}


def test_the_generator_reaches_the_hard_cases() -> None:
    """The round trips above are only as strong as what they are fed: the generator must produce each
    of the cases that break formats."""
    spans = lambda d: [(s.begin, s.end) for s in d.spans]  # noqa: E731
    hard: dict[str, Callable[[Document], bool]] = {
        "a label outside the schema": lambda d: any(s.label not in SCHEMA.label_names for s in d.spans),
        "a schema label": lambda d: any(s.label in SCHEMA.label_names for s in d.spans),
        "a relation both ways": lambda d: any((t, h) in _pairs(d) for h, t in _pairs(d) if h != t),
        "a relation from a span to itself": lambda d: any(r.head == r.tail for r in d.relations),
        "a span boundary after text outside the BMP": lambda d: any(
            any(ord(c) > 0xFFFF for c in d.text[: s.begin]) for s in d.spans
        ),
        "CRLF in a span": lambda d: any("\r\n" in d.covered(s) for s in d.spans),
        "a zero-width or combining character": lambda d: bool(set(d.text) & set("\u200b\u200d\ufeff\u0301")),
        "a line break str.splitlines knows": lambda d: bool(set(d.text) & set("\u2028\x85")),
        "crossing spans": lambda d: any(a < c < b < e for a, b in spans(d) for c, e in spans(d)),
        "nested spans": lambda d: any(a < c and e < b for a, b in spans(d) for c, e in spans(d)),
        "the same range twice": lambda d: len(set(spans(d))) < len(spans(d)),
    }
    for name, condition in hard.items():
        try:
            _found(condition, documents())
        except NoSuchExample:
            pytest.fail(f"the generator never makes [{name}]")
    # the other formats are fed the label brat refuses; brat's refusal sees it anywhere among the spans
    _found(lambda d: any(s.label == "has space" for s in d.spans), documents(ANY_LABELS))
    _found(lambda d: d.spans[-1].label != "has space", documents_brat_cannot_store())
    _found(lambda d: d.relations[-1].id != "R999", documents_label_studio_cannot_store())


def test_a_hard_document_round_trips_through_every_pair() -> None:
    """One hand-built case of each kind above, as a fixed regression document."""
    doc = Document("d0", "x\r\nchest pain 😀\u200b e\u0301")
    pain = doc.add_span("problem", 3, 13)
    own = doc.add_span("team_label", 3, 8)
    doc.add_relation(pain, own, label="partOf")
    doc.add_relation(own, pain, label=SCHEMA.relation)
    round_trips(doc, PAIRS)


@FAST
@given(documents())
def test_markup_and_bio_keep_what_they_can_express_and_report_the_rest(doc: Document) -> None:
    known = doc.in_schema()  # the token formats carry the schema's labels only
    with tempfile.TemporaryDirectory() as tmp:
        markup_format.write([known], Path(tmp) / "m.jsonl")
        (back,) = markup_format.read(Path(tmp) / "m.jsonl")
        assert back.text == known.text
        lost = {x.item_id for x in markup_language.losses(known) if x.kind == "span"}
        assert Counter(s.key for s in back.spans) == Counter(s.key for s in known.spans if s.id not in lost)

        bio.write([known], Path(tmp) / "d.bio")
        (back,) = bio.read(Path(tmp) / "d.bio")
        lost = {x.item_id for x in bio.losses(known) if x.kind == "span"}
        # BIO rebuilds the text from its tokens: compare the covered tokens
        assert Counter((s.label, "".join(back.covered(s).split())) for s in back.spans) == Counter(
            (s.label, "".join(known.covered(s).split())) for s in known.spans if s.id not in lost
        )
        assert sum(x.kind == "relation" for x in bio.losses(known)) == len(known.relations)


def test_span_ids_may_be_foreign() -> None:
    """Label Studio region ids are not brat ids: brat renumbers and keeps the relations."""
    doc = Document("d0", "chest pain")
    doc.spans = [Span("region-a", "problem", 0, 10), Span("region-b", "bodyloc", 0, 5)]
    doc.relations = [Relation("x", "region-a", "region-b")]
    with tempfile.TemporaryDirectory() as tmp:
        assert canonical(through(doc, "brat", Path(tmp))) == canonical(doc)
