"""The Kiwi span markup: the exact training format, alignment back to offsets, garbage model output."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from recommender import markup_language
from recommender.document import Document
from recommender.errors import FormatError
from recommender.formats import markup as markup_format
from recommender.schema import load_schema
from recommender.text import segment

KIWI_TARGET = (
    'She had used <span class="drug">Cutivate</span> cream in the past for '
    '<span class="problem">the atopic dermatitis</span> with good results .'
)


@pytest.fixture
def kiwi_doc() -> Document:
    text = "She had used Cutivate cream in the past for the atopic dermatitis with good results."
    doc = Document("kiwi", text)
    doc.add_span("drug", text.index("Cutivate"), text.index(" cream"))
    doc.add_span("problem", text.index("the atopic"), text.index(" with"))
    return segment(doc)


def test_ner_form_is_the_kiwi_training_target(kiwi_doc: Document) -> None:
    assert markup_language.ner_markup(kiwi_doc, kiwi_doc.sentences[0]) == KIWI_TARGET


def test_re_form(emoji_doc: Document) -> None:
    segment(emoji_doc)
    first = emoji_doc.sentences[0]
    examples = {emoji_doc.covered(e): (i, t) for e, i, t in markup_language.re_examples(emoji_doc, first)}
    assert set(examples) == {"chest pain", "aspirin", "𝔥eadache"}
    source, target = examples["chest pain"]
    assert source.count("<span") == 1 and '<span class="problem">chest pain</span>' in source
    assert target.startswith(
        'Pt 😀 <span class="negation">denies</span> <span class="bodyloc">chest</span> pain'
    )
    assert "<span" not in examples["𝔥eadache"][1]  # no modifiers: the plain sentence


def test_markup_aligns_back_exactly(emoji_doc: Document) -> None:
    schema = load_schema()
    segment(emoji_doc)
    for sentence in emoji_doc.sentences:
        ner = markup_language.ner_markup(emoji_doc, sentence)
        found = markup_language.parse_markup(ner, emoji_doc, sentence, schema.entity_names)
        expected = {s.key for s in emoji_doc.entities() if sentence.begin <= s.begin < sentence.end}
        assert set(found) == expected
        for entity, _, target in markup_language.re_examples(emoji_doc, sentence):
            mods = {emoji_doc.span(r.tail).key for r in emoji_doc.relations if r.head == entity.id}
            assert (
                set(markup_language.parse_markup(target, emoji_doc, sentence, schema.allowed[entity.label]))
                == mods
            )


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ('She had used<span class="drug">Cutivate</span>cream', [("drug", "Cutivate")]),  # missing spaces
        ('She  had used <span class="drug"> Cutivate </span>  cream', [("drug", "Cutivate")]),  # extra spaces
        ("<SPAN CLASS='Drug'>Cutivate</SPAN> <EOS>", [("drug", "Cutivate")]),  # case, quotes, EOS
        (
            '<span class="problem">the atopic <span class="problem">dermatitis</span></span>',
            [
                ("problem", "the atopic dermatitis"),
                ("problem", "dermatitis"),
            ],
        ),  # nested
        (
            '<span class="drug">Cutivate</span> <span class="problem">the atopic',
            [("drug", "Cutivate")],
        ),  # unclosed
        ('<span class="tumour">Cutivate</span> <span class="drug">cream</span>', [("drug", "cream")]),
        ('she had used <span class="drug">CUTIVATE</span>', [("drug", "Cutivate")]),  # changed case
        ('<span class="drug">Cuti</span>vate cream', [("drug", "Cutivate")]),  # split token: whole token
        (
            '<span class="drug">Cutivate &amp; cream</span>',
            [("drug", "Cutivate cream")],
        ),  # escaped, extra word
        ('### Output Text: She had used <span class="drug">Cutivate</span> cream', [("drug", "Cutivate")]),
    ],
)
def test_tolerant_alignment(kiwi_doc: Document, output: str, expected: list[tuple[str, str]]) -> None:
    found = markup_language.parse_markup(output, kiwi_doc, kiwi_doc.sentences[0], ["drug", "problem"])
    assert sorted((label, kiwi_doc.text[b:e]) for label, b, e in found) == sorted(expected)


GARBAGE = [
    "",
    "<EOS>",
    "</span></span></span>",
    "<span class=",
    '<span class="drug">',
    "<<<>>> &&& &#xZZZ; &nbsp;",
    '<span class="drug"></span>',
    "\x00\ufffd\ud800 garbage",
    "lorem ipsum dolor sit amet " * 200,
    '<span class="drug">' * 50 + "Cutivate" + "</span>" * 49,
    '<span class="problem">nothing in this sentence at all</span>',
    "<div><span class=drug>Cutivate</div>",
    "😀" * 30 + '<span class="drug">💊</span>',
    '<span class="drug">She had used Cutivate cream in the past for the atopic dermatitis with good results.'
    "</span> and then much more text that the model invented </span>",
]


@pytest.mark.parametrize("output", GARBAGE)
def test_garbage_never_raises_and_stays_in_the_sentence(kiwi_doc: Document, output: str) -> None:
    sentence = kiwi_doc.sentences[0]
    starts = {t.begin for t in kiwi_doc.tokens}
    ends = {t.end for t in kiwi_doc.tokens}
    for label, b, e in markup_language.parse_markup(output, kiwi_doc, sentence, ["drug"]):
        assert label == "drug" and sentence.begin <= b < e <= sentence.end
        assert b in starts and e in ends


def test_losses_say_why() -> None:
    text = "Chest pains today. No fever."
    doc = Document("d", text)
    pain = doc.add_span("problem", 0, 11)
    part = doc.add_span("problem", 6, 9)  # "pai": inside a token
    orphan = doc.add_span("temporal", 12, 17)
    neg = doc.add_span("negation", 19, 21)
    rel = doc.add_relation(pain, neg)  # modifier in the next sentence
    reasons = {x.item_id: x.reason for x in markup_language.losses(doc)}
    assert reasons == {
        part.id: "boundary inside a token",
        orphan.id: "modifier without a relation to a main entity of its sentence",
        neg.id: "modifier without a relation to a main entity of its sentence",
        rel.id: "entity or modifier not expressed",
    }
    assert not doc.sentences  # losses() segments a copy, not the caller's document


def test_file_round_trip_and_warning(
    emoji_doc: Document, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emoji_doc.add_span("problem", 1, 2)  # "t" of "Pt": cannot be expressed
    path = tmp_path / "doc.jsonl"
    with caplog.at_level(logging.WARNING):
        markup_format.write([emoji_doc], path)
    assert "1 span(s) and 0 relation(s)" in caplog.text
    (back,) = markup_format.read(path)
    assert back.text == emoji_doc.text
    assert {s.key for s in back.spans} == {s.key for s in emoji_doc.spans[:-1]}
    pairs = {(back.span(r.head).key, back.span(r.tail).key) for r in back.relations}
    assert pairs == {(emoji_doc.span(r.head).key, emoji_doc.span(r.tail).key) for r in emoji_doc.relations}


def test_records_without_doc_text_rebuild_normalised_text(emoji_doc: Document, tmp_path: Path) -> None:
    path = tmp_path / "model.jsonl"
    rows = markup_format.records(emoji_doc)
    for row in rows:
        row.pop("doc_text", None)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (back,) = markup_format.read(path)
    assert back.text == "Pt 😀 denies chest pain 🩺. Took aspirin 81 mg daily 💊 for 𝔥eadache .\nBP 120/80 ."
    found = sorted((s.label, back.covered(s)) for s in back.spans)
    assert found == sorted((s.label, emoji_doc.covered(s)) for s in emoji_doc.spans)
    assert len(back.relations) == len(emoji_doc.relations)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"doc_id": "a", "ner": "x", "begin": 0', "malformed JSON"),
        ('{"ner": "x", "begin": 0, "end": 1}', "needs doc_id and ner"),
        ('{"doc_id": "a", "ner": "x", "begin": "0", "end": 1}', "must be integers"),
        ('{"doc_id": "a", "ner": "x", "begin": 0, "end": 99, "doc_text": "short"}', "outside doc_text"),
    ],
)
def test_malformed_markup_files(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(FormatError, match=f"bad.jsonl.*{problem}"):
        markup_format.read(path)
