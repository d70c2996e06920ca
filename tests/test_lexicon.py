"""The lexicon baseline: overfit two notes, save, reload, same predictions; RE mode keeps given entities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recommender.document import Document
from recommender.errors import ConfigError, ModelError
from recommender.extractors import load_extractor
from recommender.extractors.base import MODEL_INFO_FILE, ModelInfo
from recommender.extractors.lexicon import NAME, LexiconConfig, LexiconExtractor


def _note(doc_id: str, text: str, spans: list[tuple[str, str]], rels: list[tuple[int, int]]) -> Document:
    doc = Document(id=doc_id, text=text)
    made = []
    start = 0
    for label, phrase in spans:
        b = text.index(phrase, start if label != "bodyloc" else 0)
        made.append(doc.add_span(label, b, b + len(phrase)))
        start = b
    for h, t in rels:
        doc.add_relation(made[h], made[t])
    return doc.validate()


@pytest.fixture
def two_notes() -> list[Document]:
    a = _note(
        "a",
        "Patient denies chest pain. Started aspirin 81 mg daily 💊 for headache.",
        [
            ("negation", "denies"),
            ("problem", "chest pain"),
            ("bodyloc", "chest"),
            ("drug", "aspirin"),
            ("strength", "81 mg"),
            ("frequency", "daily"),
            ("problem", "headache"),
        ],
        [(1, 0), (1, 2), (3, 4), (3, 5)],
    )
    b = _note(
        "b",
        "No fever. ECG showed normal sinus rhythm. Metformin 500 mg twice daily.",
        [
            ("negation", "No"),
            ("problem", "fever"),
            ("test", "ECG"),
            ("labvalue", "normal sinus rhythm"),
            ("drug", "Metformin"),
            ("strength", "500 mg"),
            ("frequency", "twice daily"),
        ],
        [(1, 0), (2, 3), (4, 5), (4, 6)],
    )
    return [a, b]


def _keys(doc: Document) -> set[tuple[str, int, int]]:
    return {s.key for s in doc.spans}


def _rel_keys(doc: Document) -> set[tuple[tuple[str, int, int], tuple[str, int, int]]]:
    return {(h.key, t.key) for _, h, t in doc.relation_pairs()}


def test_overfit_two_notes_save_reload(two_notes: list[Document], tmp_path: Path) -> None:
    model = LexiconExtractor.train(two_notes)
    bare = [d.without_annotations() for d in two_notes]
    pred = model.predict(bare)
    for gold, p in zip(two_notes, pred, strict=True):
        assert _keys(p) == _keys(gold), gold.id
        assert _rel_keys(p) == _rel_keys(gold), gold.id
        assert all(s.source == model.version and s.score is not None for s in p.spans)
        assert all(r.source == model.version and 0 < (r.score or 0) <= 1 for r in p.relations)
        assert 0.0 <= p.uncertainty < 0.5

    model.save(tmp_path / "m")
    info = json.loads((tmp_path / "m" / MODEL_INFO_FILE).read_text())
    assert info["extractor"] == NAME
    assert info["data_fingerprint"] and info["config"]["max_tokens"] == 8
    again = load_extractor(tmp_path / "m")
    assert isinstance(again, LexiconExtractor)
    assert again.version == model.version
    pred2 = again.predict(bare)
    for p, q in zip(pred, pred2, strict=True):
        assert [(s.key, s.score, s.source) for s in p.spans] == [(s.key, s.score, s.source) for s in q.spans]
        assert _rel_keys(p) == _rel_keys(q)
        assert p.meta == q.meta


def test_predict_has_no_side_effects(two_notes: list[Document]) -> None:
    model = LexiconExtractor.train(two_notes)
    bare = two_notes[0].without_annotations()
    model.predict([bare])
    assert bare.spans == [] and bare.relations == [] and bare.sentences == [] and bare.uncertainty is None


def test_entities_given_keeps_given_entities(two_notes: list[Document]) -> None:
    model = LexiconExtractor.train(two_notes)
    doc = two_notes[0].without_annotations()
    # An entity the lexicon never saw, with an id that a naive prediction could clash with.
    b = doc.text.index("Patient")
    given = doc.add_span("problem", b, b + len("Patient"), source="annotator")
    pain = doc.add_span("problem", doc.text.index("chest pain"), doc.text.index("chest pain") + 10)
    [p] = model.predict([doc], entities_given=True)
    entities = [s for s in p.spans if s.label in ("problem", "test", "drug", "treatment")]
    assert {(s.id, s.key, s.source) for s in entities} == {
        (given.id, given.key, "annotator"),
        (pain.id, pain.key, None),
    }
    assert len({s.id for s in p.spans}) == len(p.spans)
    # Modifiers are still predicted and linked to the given entity.
    neg = next(s for s in p.spans if s.label == "negation")
    assert (pain.key, neg.key) in _rel_keys(p)


def test_rare_label_share_filters_common_words() -> None:
    text = "pain here. pain there. pain everywhere. severe pain."
    doc = Document(id="x", text=text)
    b = text.index("severe pain") + len("severe ")
    doc.add_span("problem", b, b + 4)
    model = LexiconExtractor.train([doc], config=LexiconConfig(min_score=0.3))
    [p] = model.predict([doc.without_annotations()])
    assert p.spans == []  # "pain" was annotated once in four occurrences: share 0.25 < 0.3
    low = LexiconExtractor.train([doc], config=LexiconConfig(min_score=0.2))
    [q] = low.predict([doc.without_annotations()])
    assert [(s.label, s.score) for s in q.spans] == [("problem", 0.25)] * 4


def test_empty_note_is_most_uncertain(two_notes: list[Document]) -> None:
    model = LexiconExtractor.train(two_notes)
    [p] = model.predict([Document(id="e", text="")])
    assert p.spans == [] and p.uncertainty == 1.0


def test_bad_config_and_folders(tmp_path: Path, two_notes: list[Document]) -> None:
    with pytest.raises(ConfigError, match=r"\[0\]"):
        LexiconConfig(max_tokens=0)
    with pytest.raises(ModelError):
        LexiconExtractor.load(tmp_path)
    model = LexiconExtractor.train(two_notes)
    model.save(tmp_path / "m")
    (tmp_path / "m" / "lexicon.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        LexiconExtractor.load(tmp_path / "m")
    ModelInfo(extractor="kiwi.encoder.v1", version="v").save(tmp_path / "other")
    with pytest.raises(ModelError, match=r"\[kiwi.encoder.v1\]"):
        LexiconExtractor.load(tmp_path / "other")
