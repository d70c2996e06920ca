"""Every format over every note of the shared corpus: lossless ones identical, token formats exact
on what they can express and reporting exactly what they cannot."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest

from recommender import markup_language
from recommender.document import Document, Segment, Span
from recommender.formats import bio, brat, jsonl, labelstudio
from recommender.formats import markup as markup_format
from recommender.schema import load_schema
from recommender.text import segment


@pytest.fixture(scope="session")
def segmented_docs(mtsamples_docs: list[Document]) -> list[Document]:
    """The corpus segmented once per session (about 10 s), on copies of the shared fixture."""
    return [segment(d) for d in copy.deepcopy(mtsamples_docs)]


def _annotations(doc: Document) -> tuple[list[tuple[str, str, int, int]], list[tuple[str, str, str]]]:
    return (
        [(s.id, s.label, s.begin, s.end) for s in doc.spans],
        [(r.head, r.tail, r.label) for r in doc.relations],
    )


def test_brat_round_trip(mtsamples_docs: list[Document], tmp_path: Path) -> None:
    brat.write(mtsamples_docs, tmp_path)
    back = brat.read(tmp_path)
    assert [(d.id, d.text, _annotations(d)) for d in back] == [
        (d.id, d.text, _annotations(d)) for d in mtsamples_docs
    ]


def test_jsonl_round_trip(segmented_docs: list[Document], tmp_path: Path) -> None:
    jsonl.write(segmented_docs, tmp_path / "docs.jsonl")
    assert jsonl.read(tmp_path / "docs.jsonl") == segmented_docs


def test_brat_to_label_studio_to_brat(mtsamples_docs: list[Document], tmp_path: Path) -> None:
    labelstudio.write(mtsamples_docs, tmp_path / "tasks.json")
    via_ls = labelstudio.read(tmp_path / "tasks.json")
    brat.write(via_ls, tmp_path / "brat")
    back = brat.read(tmp_path / "brat")
    assert [(d.id, d.text, _annotations(d)) for d in back] == [
        (d.id, d.text, _annotations(d)) for d in mtsamples_docs
    ]
    for doc in mtsamples_docs:
        assert (tmp_path / "brat" / f"{doc.id}.ann").read_text(encoding="utf-8") == brat.format_ann(doc)


def _in_sentence(span: Span, sentences: list[Segment]) -> int | None:
    return next((k for k, s in enumerate(sentences) if s.begin <= span.begin and span.end <= s.end), None)


def _token_aligned(doc: Document) -> set[str]:
    starts = {t.begin for t in doc.tokens}
    ends = {t.end for t in doc.tokens}
    return {s.id for s in doc.spans if s.begin in starts and s.end in ends}


def test_corpus_has_no_overlaps_within_a_column(segmented_docs: list[Document]) -> None:
    """Makes the expectations below simple: no crossing or stacked spans of one kind in this corpus."""
    schema = load_schema()
    for doc in segmented_docs:
        for group in (doc.entities(schema), doc.modifiers(schema)):
            ordered = sorted(group, key=lambda s: (s.begin, s.end))
            assert all(b.begin >= a.end for a, b in itertools.pairwise(ordered))


def test_markup_keeps_all_it_can_express(segmented_docs: list[Document], tmp_path: Path) -> None:
    schema = load_schema()
    markup_format.write(segmented_docs, tmp_path / "markup.jsonl")
    back = {d.id: d for d in markup_format.read(tmp_path / "markup.jsonl")}
    assert list(back) == [d.id for d in segmented_docs]
    total_lost = 0
    for doc in segmented_docs:
        # Expected from first principles, not from the module: token-aligned, inside one sentence, and
        # for a modifier, related to such an entity of the same sentence.
        aligned = _token_aligned(doc)
        sentence_of = {s.id: _in_sentence(s, doc.sentences) for s in doc.spans}
        ok = {s.id for s in doc.entities(schema) if s.id in aligned and sentence_of[s.id] is not None}
        relations = {
            r.id
            for r in doc.relations
            if r.head in ok and r.tail in aligned and sentence_of[r.tail] == sentence_of[r.head]
        }
        ok |= {r.tail for r in doc.relations if r.id in relations}
        index = doc.span_index()
        got = back[doc.id]
        assert got.text == doc.text
        assert sorted(s.key for s in got.spans) == sorted(index[i].key for i in ok)
        got_pairs = {(got.span(r.head).key, got.span(r.tail).key) for r in got.relations}
        assert got_pairs == {
            (index[r.head].key, index[r.tail].key) for r in doc.relations if r.id in relations
        }
        lost = markup_language.losses(doc)
        assert {x.item_id for x in lost if x.kind == "span"} == {s.id for s in doc.spans} - ok
        assert {x.item_id for x in lost if x.kind == "relation"} == {r.id for r in doc.relations} - relations
        inside_token = {x.item_id for x in lost if x.reason == "boundary inside a token"}
        assert inside_token == {s.id for s in doc.spans} - aligned
        total_lost += len(lost)
    assert total_lost > 0  # the corpus does hold inexpressible annotations: the check above is not vacuous


def test_bio_keeps_all_it_can_express(segmented_docs: list[Document], tmp_path: Path) -> None:
    bio.write(segmented_docs, tmp_path / "corpus.bio")
    back = bio.read(tmp_path / "corpus.bio")
    assert [d.id for d in back] == [d.id for d in segmented_docs]
    not_aligned = 0
    for doc, got in zip(segmented_docs, back, strict=True):
        assert [got.covered(t) for t in got.tokens] == [doc.covered(t) for t in doc.tokens]
        assert len(got.sentences) == len(doc.sentences)
        aligned = _token_aligned(doc)
        expressible = {
            s.id for s in doc.spans if s.id in aligned and _in_sentence(s, doc.sentences) is not None
        }

        def by_token(d: Document, spans: list[Span]) -> list[tuple[str, int, int]]:
            first = {t.begin: k for k, t in enumerate(d.tokens)}
            last = {t.end: k for k, t in enumerate(d.tokens)}
            return sorted((s.label, first[s.begin], last[s.end]) for s in spans)

        assert by_token(got, got.spans) == by_token(doc, [s for s in doc.spans if s.id in expressible])
        lost = bio.losses(doc)
        assert {x.item_id for x in lost if x.kind == "span"} == {s.id for s in doc.spans} - expressible
        assert sum(x.kind == "relation" for x in lost) == len(doc.relations)
        inside_token = {x.item_id for x in lost if x.reason == "boundary inside a token"}
        assert inside_token == {s.id for s in doc.spans} - aligned
        not_aligned += len({s.id for s in doc.spans} - aligned)
    assert not_aligned > 0


def test_emoji_note_in_every_format(emoji_doc: Document, tmp_path: Path) -> None:
    for module, name in ((brat, "brat"), (jsonl, "d.jsonl"), (labelstudio, "d.json")):
        module.write([emoji_doc], tmp_path / name)
        (back,) = module.read(tmp_path / name)
        assert (back.text, _annotations(back)) == (emoji_doc.text, _annotations(emoji_doc)), name
    for module, name in ((markup_format, "m.jsonl"), (bio, "d.bio")):
        module.write([emoji_doc], tmp_path / name)
        (back,) = module.read(tmp_path / name)
        assert sorted((s.label, back.covered(s)) for s in back.spans) == sorted(
            (s.label, emoji_doc.covered(s)) for s in emoji_doc.spans
        ), name
