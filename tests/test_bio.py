"""BIO / CoNLL: two tag columns, what cannot be expressed, tolerant and strict reading."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from recommender.document import Document
from recommender.errors import FormatError
from recommender.formats import bio


def test_emoji_note_two_columns(
    emoji_doc: Document, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notes.bio"
    with caplog.at_level(logging.WARNING):
        bio.write([emoji_doc], path)
    assert "0 span(s) cannot be written as BIO and 5 relation(s) are dropped" in caplog.text
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[:2] == ["-DOCSTART- emoji_note", ""]
    assert "chest\tB-problem\tB-bodyloc" in lines and "pain\tI-problem\tO" in lines
    assert "𝔥eadache\tB-problem\tO" in lines
    (back,) = bio.read(path)
    assert back.id == "emoji_note" and not back.relations
    assert back.text == "Pt 😀 denies chest pain 🩺. Took aspirin 81 mg daily 💊 for 𝔥eadache .\nBP 120/80 ."
    assert sorted((s.label, back.covered(s)) for s in back.spans) == sorted(
        (s.label, emoji_doc.covered(s)) for s in emoji_doc.spans
    )
    assert [back.covered(s) for s in back.sentences] == back.text.split("\n")


def test_losses() -> None:
    doc = Document("d", "Chest pains. No fever today.")
    doc.add_span("problem", 0, 11)
    inside = doc.add_span("bodyloc", 0, 3)  # "Che"
    first = doc.add_span("temporal", 16, 27)  # "fever today"
    overlap = doc.add_span("negation", 22, 27)  # "today", same column as the temporal
    across = doc.add_span("problem", 6, 15)  # "pains. No"
    rel = doc.add_relation(doc.spans[0], inside)
    reasons = {x.item_id: x.reason for x in bio.losses(doc)}
    assert reasons == {
        inside.id: "boundary inside a token",
        overlap.id: "overlaps another span of its column",
        across.id: "crosses a sentence boundary",
        rel.id: "BIO has no relations",
    }
    assert first.id not in reasons


def test_reading_is_tolerant_where_it_can_be(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "other.conll"
    path.write_text(
        "no\tO\nacute\tI-severity\nchest\tI-problem\npain\tI-problem\nnow\tB-tumour\n\nBP\tB-test\n",
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING):
        (doc,) = bio.read(path)
    assert doc.id == "other" and doc.text == "no acute chest pain now\nBP"
    assert [(s.label, doc.covered(s)) for s in doc.spans] == [
        ("severity", "acute"),
        ("problem", "chest pain"),
        ("test", "BP"),
    ]
    assert "['tumour']" in caplog.text


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("pain\n", r"line 1: expected token<TAB>tag"),
        ("pain\tO\nchest\tX-problem\n", r"line 2: not a BIO tag \[X-problem\]"),
        ("a\tO\tO\tO\n", r"line 1: .*got 4 column"),
    ],
)
def test_malformed_bio(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "bad.bio"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(FormatError, match=f"bad.bio: {problem}"):
        bio.read(path)


def test_several_documents(tmp_path: Path) -> None:
    docs = [Document("a", "No fever."), Document("b", "Took aspirin.")]
    docs[1].add_span("drug", 5, 12)
    path = tmp_path / "two.bio"
    bio.write(docs, path)
    back = bio.read(path)
    assert [(d.id, d.text, [s.key for s in d.spans]) for d in back] == [
        ("a", "No fever .", []),
        ("b", "Took aspirin .", [("drug", 5, 12)]),
    ]
