"""Property tests: generated documents through every pair of formats come back exactly or are refused
by name; the token formats keep what they can express and report the rest.

The documents have labels outside the schema, text outside the BMP, CRLF line ends, zero-width and
combining characters, overlapping and nested spans, and relations both ways between the same spans.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recommender import markup
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
SPAN_LABELS = st.sampled_from(SCHEMA.label_names) | OWN_LABELS | st.just("has space")
RELATION_LABELS = st.just(SCHEMA.relation) | OWN_LABELS


@st.composite
def documents(draw: st.DrawFn) -> Document:
    text = "".join(draw(st.lists(st.sampled_from(PIECES), min_size=1, max_size=30)))
    doc = Document("d0", text)
    n = len(text)
    for _ in range(draw(st.integers(0, 8)) if n > 1 else 0):
        begin = draw(st.integers(0, n - 1))
        end = draw(st.integers(begin + 1, min(n, begin + 25)))
        doc.add_span(draw(SPAN_LABELS), begin, end)
    if doc.spans:
        for _ in range(draw(st.integers(0, 6))):
            head, tail = draw(st.sampled_from(doc.spans)), draw(st.sampled_from(doc.spans))
            doc.relations.append(Relation(doc.new_relation_id(), head.id, tail.id, draw(RELATION_LABELS)))
            if draw(st.booleans()):  # the same pair the other way round
                doc.relations.append(Relation(doc.new_relation_id(), tail.id, head.id, draw(RELATION_LABELS)))
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


def refused_by_name(error: Exception, doc: Document) -> bool:
    """The message names, in brackets, a label, span, relation or character of ``doc``."""
    named = set(re.findall(r"\[([^\]]*)\]", str(error)))
    items = {s.label for s in doc.spans} | {r.label for r in doc.relations} | {s.id for s in doc.spans}
    items |= {r.id for r in doc.relations} | {f"U+{ord(c):04X}" for c in doc.text}
    return bool(named & items)


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(documents())
def test_every_pair_of_lossless_formats_round_trips_or_refuses_by_name(doc: Document) -> None:
    expected = canonical(doc)
    with tempfile.TemporaryDirectory() as tmp:
        for k, (first, second) in enumerate((a, b) for a in LOSSLESS for b in LOSSLESS):
            folder = Path(tmp) / str(k)
            try:
                back = through(through(doc, first, folder / "a"), second, folder / "b")
            except (FormatError, DocumentError) as e:
                assert refused_by_name(e, doc), f"{first} -> {second}: {e}"
                continue
            assert canonical(back) == expected, f"{first} -> {second}"


def test_the_generator_reaches_the_hard_cases() -> None:
    """The round trip above is only as strong as what it is fed: out-of-schema labels, reversed relations
    and XML-hostile text do occur (and brat refuses the label with a space by name)."""
    doc = Document("d0", "x\r\nchest pain 😀\u200b e\u0301")
    pain = doc.add_span("problem", 3, 13)
    own = doc.add_span("team_label", 3, 8)
    doc.add_relation(pain, own, label="partOf")
    doc.add_relation(own, pain, label=SCHEMA.relation)
    with tempfile.TemporaryDirectory() as tmp:
        for a in LOSSLESS:
            for b in LOSSLESS:
                assert canonical(through(through(doc, a, Path(tmp) / a), b, Path(tmp) / b)) == canonical(doc)
        doc.add_span("has space", 0, 1)
        with pytest.raises(FormatError, match=r"\[has space\]"):
            through(doc, "brat", Path(tmp) / "refused")


@FAST
@given(documents())
def test_markup_and_bio_keep_what_they_can_express_and_report_the_rest(doc: Document) -> None:
    known = doc.in_schema()  # the token formats carry the schema's labels only
    with tempfile.TemporaryDirectory() as tmp:
        markup_format.write([known], Path(tmp) / "m.jsonl")
        (back,) = markup_format.read(Path(tmp) / "m.jsonl")
        assert back.text == known.text
        lost = {x.item_id for x in markup.losses(known) if x.kind == "span"}
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
