"""INCEpTION external recommender protocol: shared fixtures and requests built from the shared corpus."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cassis import Cas, TypeSystem
from fastapi.testclient import TestClient

from recommender.corpora import SAMPLE_DIR
from recommender.document import Document, Segment
from recommender.extractors.lexicon import LexiconExtractor
from recommender.formats import brat
from recommender.formats.xmi import (
    PREDICTED,
    TOKEN,
    document_to_cas,
    load_cas,
    load_typesystem_xml,
    project_typesystem,
    snap,
)
from recommender.retraining import Corpora
from recommender.service import create_app
from recommender.settings import Settings

SPAN = "webanno.custom.ClinicalEntity"
REL = "webanno.custom.HasAttr"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, mtsamples_docs: list[Document]) -> Path:
    folder = tmp_path_factory.mktemp("model") / "lexicon"
    LexiconExtractor.train(brat.read(SAMPLE_DIR) + mtsamples_docs[:6]).save(folder)
    return folder


@pytest.fixture
def client(tmp_path: Path, model_dir: Path) -> Iterator[TestClient]:
    settings = Settings(model=model_dir, model_dir=tmp_path / "models", retrain=False)
    with TestClient(create_app(settings)) as c:
        yield c


def fixture(fixtures_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((fixtures_dir / "inception" / name).read_text(encoding="utf-8"))


def response_cas(body: dict[str, Any], request: dict[str, Any]) -> Cas:
    return load_cas(body["document"], load_typesystem_xml(request["typeSystem"]))


def predicted(cas: Cas, type_name: str) -> list[Any]:
    return [fs for fs in cas.select(type_name) if fs.get(PREDICTED)]


def predict_typesystem() -> TypeSystem:
    """The project type system plus the prediction features INCEpTION adds to every layer."""
    ts = project_typesystem()
    for name in (SPAN, REL):
        t = ts.get_type(name)
        ts.create_feature(t, PREDICTED, "uima.cas.Boolean")
        for suffix, range_type in (("_score", "uima.cas.Double"), ("_score_explanation", "uima.cas.String")):
            ts.create_feature(t, f"label{suffix}", range_type)
    return ts


def predict_request(doc: Document, layer: str = SPAN, ts: TypeSystem | None = None, **meta: Any) -> dict:
    ts = ts or predict_typesystem()
    return {
        "typeSystem": ts.to_xml(),
        "document": {"xmi": document_to_cas(doc, ts).to_xmi(), "documentId": 7, "userId": "ann1"},
        "metadata": {"layer": layer, "feature": "label", "projectId": 0, "anchoringMode": "tokens"} | meta,
    }


# --- shared fixtures --------------------------------------------------------------------------------
def test_span_fixture_gets_flagged_token_aligned_suggestions(client: TestClient, fixtures_dir: Path) -> None:
    request = fixture(fixtures_dir, "synthetic/predict_span_request.json")
    r = client.post("/inception/entities/predict", json=request)
    assert r.status_code == 200
    assert set(r.json()) == {"document"}
    before = load_cas(request["document"]["xmi"], load_typesystem_xml(request["typeSystem"]))
    after = response_cas(r.json(), request)
    assert after.sofa_string == before.sofa_string
    new = predicted(after, SPAN)
    assert new, "the lexicon knows 'aspirin', 'chest pain', 'fever'"
    version = client.post("/setup").json()["model_version"]
    tokens = {(t.begin, t.end) for t in after.select(TOKEN)}
    starts, ends = {b for b, _ in tokens}, {e for _, e in tokens}
    for fs in new:
        assert fs.begin in starts and fs.end in ends
        assert 0.0 <= fs.get("label_score") <= 1.0
        assert version in fs.get("label_score_explanation")
    # The accepted annotation is still there, unflagged, and not suggested again.
    old = [(fs.get("label"), fs.begin, fs.end) for fs in after.select(SPAN) if not fs.get(PREDICTED)]
    assert old == [("problem", 23, 33)]
    assert ("problem", 23, 33) not in {(fs.get("label"), fs.begin, fs.end) for fs in new}
    assert ("drug", 83, 90) in {(fs.get("label"), fs.begin, fs.end) for fs in new}


def test_relation_fixture_links_existing_spans_only(client: TestClient, fixtures_dir: Path) -> None:
    request = fixture(fixtures_dir, "synthetic/predict_relation_request.json")
    r = client.post("/inception/relations/predict", json=request)
    assert r.status_code == 200
    before = load_cas(request["document"]["xmi"], load_typesystem_xml(request["typeSystem"]))
    after = response_cas(r.json(), request)
    assert len(after.select(SPAN)) == len(before.select(SPAN)), "no new spans from the relation recommender"
    old_spans = {(fs.begin, fs.end) for fs in before.select(SPAN)}
    new = predicted(after, REL)
    assert new
    pairs = set()
    for fs in new:
        gov, dep = fs.get("Governor"), fs.get("Dependent")
        assert (gov.begin, gov.end) in old_spans and (dep.begin, dep.end) in old_spans
        assert (fs.begin, fs.end) == (dep.begin, dep.end)
        assert fs.get("label") == "hasAttr" and fs.get("label_score") is not None
        pairs.add(((gov.begin, gov.end), (dep.begin, dep.end)))
    assert ((23, 33), (16, 22)) not in pairs, "the accepted relation is not suggested again"
    assert ((83, 90), (91, 96)) in pairs  # aspirin -> 81 mg


def test_docs_example_for_an_unknown_layer_comes_back_unchanged(
    client: TestClient, fixtures_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    request = fixture(fixtures_dir, "inception-docs/predict_request_example.json")
    with caplog.at_level(logging.INFO, logger="recommender"):
        first = client.post("/inception/entities/predict", json=request)
        second = client.post("/inception/entities/predict", json=request)
    assert first.status_code == second.status_code == 200
    assert first.json() == {"document": request["document"]["xmi"]}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "unchanged" in r.getMessage()]
    assert len(warnings) == 1, "one log line, not one per request"
    assert "NamedEntity" in warnings[0].getMessage()


def test_train_fixture_is_stored_once_and_answers_204(client: TestClient, fixtures_dir: Path) -> None:
    request = fixture(fixtures_dir, "synthetic/train_request.json")
    service = client.app.state.service
    assert client.post("/inception/entities/train", json=request).status_code == 204
    stored = service.store.latest("inception-1")
    assert len(stored) == len(request["documents"]) and stored[0].spans
    last = service.store.last_id()
    assert client.post("/inception/entities/train", json=request).status_code == 204
    assert service.store.last_id() == last, "INCEpTION's resends are not stored again"


def test_docs_train_example_for_an_unknown_layer_stores_nothing_and_unknown_name(
    client: TestClient, fixtures_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The docs example asks for NamedEntity, which this recommender does not serve. The answer is 204
    # either way, so the store and the log line are what show the documents were refused.
    request = fixture(fixtures_dir, "inception-docs/train_request_example.json")
    service = client.app.state.service
    with caplog.at_level(logging.WARNING, logger="recommender"):
        assert client.post("/inception/entities/train", json=request).status_code == 204
    assert service.store.last_id() == 0 and service.store.projects() == [], "nothing stored, so no job"
    [warning] = [r.getMessage() for r in caplog.records if "unchanged" in r.getMessage()]
    assert "[de.tudarmstadt.ukp.dkpro.core.api.ner.type.NamedEntity]" in warning
    assert "project [1337]" in warning
    r = client.post(
        "/inception/nope/predict", json=fixture(fixtures_dir, "synthetic/predict_span_request.json")
    )
    assert r.status_code == 404 and "entities" in r.json()["detail"]


def test_train_answers_429_while_a_job_for_the_project_runs(
    tmp_path: Path, model_dir: Path, fixtures_dir: Path
) -> None:
    release, started = threading.Event(), threading.Event()

    def slow_trainer(
        train: Sequence[Document], dev: Sequence[Document], out: Path, init: Path | None, **kw: Any
    ):
        started.set()
        release.wait(20)
        LexiconExtractor.train(train).save(out)
        return out

    settings = Settings(
        model=model_dir, model_dir=tmp_path / "models", retrain_debounce_seconds=0, trainer="kiwi.lexicon.v1"
    )
    app = create_app(settings, corpora=Corpora([], []), trainer=slow_trainer)
    request = fixture(fixtures_dir, "synthetic/train_request.json")
    with TestClient(app) as c:
        try:
            assert c.post("/inception/entities/train", json=request).status_code == 204
            assert started.wait(20), "the job started in the background"
            t0 = time.perf_counter()
            assert c.post("/inception/entities/train", json=request).status_code == 429
            changed = json.loads(json.dumps(request).replace('label=\\"problem\\"', 'label=\\"test\\"'))
            assert c.post("/inception/entities/train", json=changed).status_code == 429
            assert time.perf_counter() - t0 < 5, "train answers at once"
            assert len(app.state.service.store.history("inception-1", "100")) == 2, "stored although busy"
        finally:
            release.set()


# --- requests built from the shared corpus ---------------------------------------------------------
def test_corpus_notes_get_token_aligned_suggestions(
    client: TestClient, mtsamples_docs: list[Document]
) -> None:
    found = gold = 0
    for doc in mtsamples_docs[:3]:
        request = predict_request(doc.without_annotations())
        r = client.post("/inception/entities/predict", json=request)
        assert r.status_code == 200
        cas = response_cas(r.json(), request)
        tokens = {(t.begin, t.end) for t in cas.select(TOKEN)}
        starts, ends = {b for b, _ in tokens}, {e for _, e in tokens}
        keys = {(fs.get("label"), fs.begin, fs.end) for fs in predicted(cas, SPAN)}
        assert all(b in starts and e in ends for _, b, e in keys)
        found += len(keys & {s.key for s in doc.spans})
        gold += len(doc.spans)
    assert found / gold > 0.5, "the lexicon saw these notes in training"


def test_corpus_note_with_gold_spans_gets_relations_and_no_duplicates(
    client: TestClient, mtsamples_docs: list[Document]
) -> None:
    doc = mtsamples_docs[0]
    spans_only = Document(doc.id, doc.text, spans=list(doc.spans))
    request = predict_request(spans_only, REL)
    cas = response_cas(client.post("/inception/relations/predict", json=request).json(), request)
    new = predicted(cas, REL)
    assert new
    gold_pairs = {(doc.span(r.head).key, doc.span(r.tail).key) for r in doc.relations}
    got = {
        (
            (fs.Governor.get("label"), fs.Governor.begin, fs.Governor.end),
            (fs.Dependent.get("label"), fs.Dependent.begin, fs.Dependent.end),
        )
        for fs in new
    }
    assert len(got & gold_pairs) / len(got) > 0.5

    # With the gold spans already in the CAS, the span recommender suggests none of them again.
    request = predict_request(spans_only)
    cas = response_cas(client.post("/inception/entities/predict", json=request).json(), request)
    assert not {(fs.get("label"), fs.begin, fs.end) for fs in predicted(cas, SPAN)} & {
        s.key for s in doc.spans
    }


def test_long_note_answers_well_inside_the_timeout(
    client: TestClient, mtsamples_docs: list[Document]
) -> None:
    text = "\n\n".join(d.text for d in mtsamples_docs[:12])
    request = predict_request(Document("long", text))
    t0 = time.perf_counter()
    r = client.post("/inception/entities/predict", json=request)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200 and len(text) > 20_000
    assert elapsed < 10, f"{elapsed:.1f} s for {len(text)} characters"


def test_non_bmp_offsets_survive_the_cas(tmp_path: Path, emoji_doc: Document) -> None:
    folder = tmp_path / "emoji_model"
    LexiconExtractor.train([emoji_doc]).save(folder)
    with TestClient(create_app(Settings(model=folder, model_dir=tmp_path / "m", retrain=False))) as c:
        request = predict_request(emoji_doc.without_annotations())
        cas = response_cas(c.post("/inception/entities/predict", json=request).json(), request)
    got = {(fs.get("label"), fs.get_covered_text()) for fs in predicted(cas, SPAN)}
    assert ("problem", "𝔥eadache") in got and ("drug", "aspirin") in got
    assert got <= {(s.label, emoji_doc.covered(s)) for s in emoji_doc.spans}


def test_tagset_spelling_is_used_and_other_labels_dropped(client: TestClient, fixtures_dir: Path) -> None:
    request = fixture(fixtures_dir, "synthetic/predict_span_request.json")
    request["tagsets"] = [
        {"tags": [{"tag": "Drug"}, {"tag": "Problem"}], "targets": [{"type": SPAN, "feature": "label"}]}
    ]
    cas = response_cas(client.post("/inception/entities/predict", json=request).json(), request)
    labels = {fs.get("label") for fs in predicted(cas, SPAN)}
    assert labels and labels <= {"Drug", "Problem"}


# --- anchoring --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "begin", "end", "expected"),
    [
        ("tokens", 0, 10, (0, 10)),  # "chest pain"
        ("tokens", 2, 10, (6, 10)),  # partial first token dropped
        ("tokens", 1, 4, None),  # covers no whole token
        ("singleToken", 0, 10, None),
        ("singleToken", 6, 10, (6, 10)),
        ("characters", 5, 11, (6, 10)),  # whitespace trimmed
    ],
)
def test_snap(mode: str, begin: int, end: int, expected: tuple[int, int] | None) -> None:
    text = "chest pain ok"
    tokens = [Segment(0, 5), Segment(6, 10), Segment(11, 13)]
    assert snap(begin, end, mode, text, tokens, [t.begin for t in tokens]) == expected
