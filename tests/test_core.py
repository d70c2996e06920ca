"""The schema, the document model, segmentation and the brat format."""

from __future__ import annotations

from pathlib import Path

import pytest

from recommender.document import Document
from recommender.errors import DocumentError, FormatError, NotFoundError, SchemaError
from recommender.formats import brat, detect_format, read_documents
from recommender.schema import load_schema
from recommender.text import segment, split_sentences


def test_schema_counts_and_pairs() -> None:
    s = load_schema()
    assert s.entity_names == ("problem", "test", "drug", "treatment")
    assert len(s.modifier_names) == 16
    assert len(set(s.label_names)) == 20
    # The guideline's 22 pairs; the paper's 21 lack test-reference_range (documented in the schema).
    assert len(s.pairs) == 22
    assert ("test", "reference_range") in s.pairs
    assert s.allows("problem", "bodyloc") and not s.allows("drug", "bodyloc")
    assert len({t.color for t in s.labels}) == 20
    with pytest.raises(SchemaError, match=r"\[tumour\]"):
        s.label("tumour")


def test_corpus_uses_only_schema_pairs(mtsamples_docs: list[Document]) -> None:
    s = load_schema()
    seen = {(h.label, t.label) for d in mtsamples_docs for _, h, t in d.relation_pairs()}
    assert seen <= set(s.pairs)
    assert len(seen) == 21


def test_validate_names_the_problem() -> None:
    doc = Document("d1", "no fever")
    doc.add_span("problem", 3, 99)
    with pytest.raises(DocumentError, match=r"\[3, 99\].*length 8.*\[d1\]"):
        doc.validate()
    doc = Document("d2", "no fever")
    fever = doc.add_span("problem", 3, 8)
    doc.add_relation(fever, fever).tail = "T9"
    with pytest.raises(DocumentError, match=r"missing span \[T9\]"):
        doc.validate()


def test_ids_and_without_annotations() -> None:
    doc = Document("d", "no fever today")
    a = doc.add_span("negation", 0, 2)
    b = doc.add_span("problem", 3, 8)
    r = doc.add_relation(b, a)
    assert (a.id, b.id, r.id) == ("T1", "T2", "R1")
    bare = doc.without_annotations()
    assert bare.spans == [] and bare.relations == [] and len(doc.spans) == 2


def test_segmentation_is_deterministic_and_clinical() -> None:
    text = "DIAGNOSES:\n1. Sepsis.\n2. Pneumonia with 5mg. dose\nBP 120/80 mmHg. Pt denies pain."
    sents = [text[s.begin : s.end] for s in split_sentences(text)]
    assert sents[0] == "DIAGNOSES:"
    assert "1. Sepsis." in sents
    d1, d2 = segment(Document("a", text)), segment(Document("b", text))
    assert d1.tokens == d2.tokens and d1.sentences == d2.sentences
    words = [d1.covered(t) for t in d1.tokens]
    assert "5" in words and "mg" in words and "\n" not in words


def test_segmentation_with_emoji(emoji_doc: Document) -> None:
    doc = segment(emoji_doc)
    words = [doc.covered(t) for t in doc.tokens]
    assert "😀" in words and "aspirin" in words
    for t in doc.tokens:
        assert not doc.covered(t).isspace()


def test_brat_round_trip_every_shared_note(mtsamples_dir: Path, tmp_path: Path) -> None:
    docs = brat.read(mtsamples_dir)
    assert len(docs) == 96
    brat.write(docs, tmp_path)
    again = brat.read(tmp_path)
    for a, b in zip(docs, again, strict=True):
        assert a.text == b.text
        assert [s.key for s in a.spans] == [s.key for s in b.spans]
        assert [(r.head, r.tail) for r in a.relations] == [(r.head, r.tail) for r in b.relations]


def test_brat_emoji_and_sample(emoji_doc: Document, tmp_path: Path, sample_dir: Path) -> None:
    brat.write([emoji_doc], tmp_path)
    (back,) = brat.read(tmp_path)
    assert [back.covered(s) for s in back.spans] == [emoji_doc.covered(s) for s in emoji_doc.spans]
    sample = brat.read(sample_dir)
    assert len(sample) >= 4 and all(d.relations for d in sample)


@pytest.mark.parametrize(
    ("ann", "error", "pattern"),
    [
        ("T1\tproblem 0 400\tx\n", DocumentError, r"bad\.ann.*\[0, 400\]"),
        ("T1\tproblem 3 8\tfever\nR1\thasAttr Arg1:T1 Arg2:T7\n", DocumentError, r"bad\.ann.*\[T7\]"),
    ],
)
def test_brat_bad_input(tmp_path: Path, ann: str, error: type[Exception], pattern: str) -> None:
    (tmp_path / "bad.txt").write_text("no fever", encoding="utf-8")
    (tmp_path / "bad.ann").write_text(ann, encoding="utf-8")
    with pytest.raises(error, match=pattern):
        brat.read(tmp_path)


def test_brat_stray_line_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "n.txt").write_text("no fever", encoding="utf-8")
    (tmp_path / "n.ann").write_text("T1\tproblem 3 8\tfever\n5\n", encoding="utf-8")
    (doc,) = brat.read(tmp_path)
    assert [s.key for s in doc.spans] == [("problem", 3, 8)]
    assert "n.ann:2" in caplog.text and "fever" not in caplog.text  # no note text in logs


def test_brat_not_utf8_and_missing(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(FormatError, match=r"x\.txt.*UTF-8"):
        brat.read(tmp_path)
    with pytest.raises(NotFoundError):
        read_documents(tmp_path / "nope")


def test_detect_format(tmp_path: Path, sample_dir: Path) -> None:
    assert detect_format(sample_dir) == "brat"
    (tmp_path / "export.json").write_text("[]")
    assert detect_format(tmp_path / "export.json") == "labelstudio"
    (tmp_path / "odd.xyz").write_text("")
    with pytest.raises(FormatError, match=r"\[\.xyz\]"):
        detect_format(tmp_path / "odd.xyz")


def test_brat_renumbers_foreign_ids(tmp_path: Path) -> None:
    doc = Document("ls", "no fever")
    neg = doc.add_span("negation", 0, 2)
    fever = doc.add_span("problem", 3, 8)
    neg.id, fever.id = "t2_e0", "aX9"  # Label Studio region ids
    doc.add_relation(fever, neg)
    brat.write([doc], tmp_path)
    (back,) = brat.read(tmp_path)
    assert [s.id for s in back.spans] == ["T1", "T2"]
    ((_, head, tail),) = back.relation_pairs()
    assert (head.label, tail.label) == ("problem", "negation")


def test_segmentation_is_thread_safe(sample_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    texts = [d.text for d in brat.read(sample_dir)] * 6
    expected = [split_sentences(t) for t in texts]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(split_sentences, texts)) == expected
