"""The suggestion log: written for both protocols, corrections scored against the right suggestion,
figures from a known set, the migration up and down, and no note text stored (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from support import run_kiwi
from test_service_inception import REL, SPAN, predict_request, predict_typesystem, response_cas

from recommender.corpora import SAMPLE_DIR
from recommender.document import Document
from recommender.evaluation.correction_scores import score_correction
from recommender.evaluation.evidence import by_version, notes_of, summarize
from recommender.extractors.lexicon import LexiconExtractor
from recommender.formats import brat
from recommender.formats.labelstudio import DEFAULT_CONFIG
from recommender.formats.xmi import DEFAULT_LAYERS, cas_to_document
from recommender.guidelines import labelstudio_config
from recommender.model_versions import ModelVersions
from recommender.retraining import Corpora, Retrainer
from recommender.retraining.recent import check as recent_check
from recommender.service import create_app
from recommender.service.suggestion_log import Evidence
from recommender.settings import Settings
from recommender.store import CorrectionStore
from recommender.store.database import downgrade, migrate, open_engine, schema_revision
from recommender.store.suggestions import NewSuggestion, ScoreRow, SuggestionLog, text_hash

NOTE = "Patient denies chest pain. Aspirin 81 mg daily for hypertension."


def note(
    text: str = NOTE, spans: list[tuple[str, int, int]] = (), relations: list[tuple[int, int]] = ()
) -> Document:
    doc = Document(id="n", text=text)
    made = [doc.add_span(label, b, e) for label, b, e in spans]
    for h, t in relations:
        doc.add_relation(made[h], made[t])
    return doc


def at(word: str, text: str = NOTE) -> tuple[int, int]:
    b = text.index(word)
    return b, b + len(word)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "lexicon"
    LexiconExtractor.train(brat.read(SAMPLE_DIR)).save(folder)
    return folder


@pytest.fixture
def client(tmp_path: Path, model_dir: Path, database_url: str) -> Iterator[TestClient]:
    settings = Settings(
        model=model_dir, model_dir=tmp_path / "models", retrain=False, database_url=database_url
    )
    with TestClient(create_app(settings, corpora=Corpora([], []))) as c:
        yield c


def all_text(engine: sa.engine.Engine, table: str) -> str:
    with engine.connect() as conn:
        return " ".join(str(v) for row in conn.execute(sa.text(f"SELECT * FROM {table}")) for v in row)


# --- one note scored: the figures from a known case ------------------------------------------------


def train_body(doc: Any, layer: Any, ts: Any, request: dict[str, Any], user: str) -> dict[str, Any]:
    """INCEpTION's training request for document 7: ``doc`` as ``user`` annotated it."""
    document = {"xmi": predict_request(doc, layer, ts)["document"]["xmi"], "documentId": 7, "userId": user}
    return {"typeSystem": ts.to_xml(), "documents": [document], "metadata": request["metadata"]}


def test_a_correction_is_classified_span_by_span() -> None:
    suggested = note(
        spans=[
            ("negation", *at("denies")),  # accepted
            ("problem", *at("chest pain")),  # relabelled below
            ("drug", *at("Aspirin 81")),  # re-bounded to "Aspirin"
            ("test", *at("daily")),  # deleted
        ],
        relations=[(1, 0)],  # problem -> negation: kept
    )
    corrected = note(
        spans=[
            ("negation", *at("denies")),
            ("problem", *at("chest pain")),
            ("drug", *at("Aspirin")),
            ("problem", *at("hypertension")),  # missed
        ],
        relations=[(1, 0), (2, 3)],  # the second is missed
    )
    suggested.spans[1].label = "treatment"  # same range, another label: relabelled
    suggested.relations.clear()
    figures = score_correction(suggested, corrected, "all")
    outcomes = {label: {k: v for k, v in row.items() if v} for label, row in figures["spans"].items()}
    assert outcomes == {
        "negation": {"accepted": 1},
        "treatment": {"relabelled": 1},
        "drug": {"rebounded": 1},
        "test": {"deleted": 1},
        "problem": {"missed": 1},
    }
    assert figures["relations"] == {"accepted": 0, "deleted": 0, "missed": 2}
    # exact: only "denies" matches; relaxed also the re-bounded drug
    spans = figures["tasks"]["spans"]
    assert spans["exact"]["negation"] == [1, 0, 0] and spans["exact"]["drug"] == [0, 1, 1]
    assert spans["relaxed"]["drug"] == [1, 0, 0]
    assert figures["edits"]["total"] == 1 + 1 + 1 + 1 + 2  # relabel, rebound, delete, add, 2 relations


def test_scope_limits_what_is_scored() -> None:
    corrected = note(spans=[("problem", *at("chest pain")), ("negation", *at("denies"))], relations=[(0, 1)])
    entities = score_correction(note(spans=[("problem", *at("chest pain"))]), corrected, "entities")
    assert set(entities["tasks"]) == {"ner", "spans"} and "relations" not in entities
    assert entities["edits"]["relations_added"] == 0  # relations were not this suggestion's to make
    relations = score_correction(corrected, corrected, "relations")
    assert set(relations["tasks"]) == {"re"} and relations["relations"]["accepted"] == 1
    assert relations["edits"]["total"] == 0 and "spans" not in relations


def row(
    version: str, doc: str, figures: dict[str, Any], n: int, annotator: str = "a", day: int = 0
) -> ScoreRow:
    created = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(days=day)
    return ScoreRow(n, created, n, n, version, "all", "p", doc, annotator, figures)


def test_status_figures_from_a_known_set() -> None:
    perfect = note(spans=[("problem", *at("chest pain")), ("drug", *at("Aspirin"))])
    half = note(spans=[("problem", *at("chest pain")), ("drug", *at("daily"))])
    good = score_correction(perfect, perfect)
    bad = score_correction(half, perfect)
    rows = [
        row("v1", "d1", bad, 1),
        row("v1", "d1", good, 2),  # the newer correction of the same note replaces the first
        row("v1", "d2", bad, 3, day=1),
        row("v2", "d1", good, 4, day=2),
    ]
    versions = by_version(notes_of(rows))
    assert list(versions) == ["v1", "v2"]
    v1 = versions["v1"]
    assert v1["notes"] == 2 and v1["spans_suggested"] == 4
    assert v1["acceptance"]["rate"] == 0.75  # 3 of 4 suggested spans accepted unchanged
    assert v1["f1"]["spans"]["exact"]["f1"] == 0.75  # tp 3, fp 1, fn 1
    assert v1["edits_per_note"]["mean"] == 1.0  # 0, and 2 for the other (delete "daily", add "Aspirin")
    lo, hi = v1["acceptance"]["ci"]
    assert 0.5 <= lo <= 0.75 <= hi <= 1.0
    assert set(v1["days"]) == {"2026-12-01", "2026-12-02"} and v1["days"]["2026-12-02"]["notes"] == 1
    assert v1["labels"]["drug"]["f1"] == 0.5 and v1["labels"]["problem"]["f1"] == 1.0
    assert v1["labels"]["drug"]["acceptance"] == 0.5 and v1["labels"]["problem"]["acceptance"] == 1.0
    assert versions["v2"]["acceptance"]["rate"] == 1.0 and versions["v2"]["edits_per_note"]["mean"] == 0
    assert summarize([])["notes"] == 0


# --- the store ---------------------------------------------------------------------------------------
def test_migration_up_and_down(database_url: str) -> None:
    engine = open_engine(database_url)
    try:
        migrate(engine)
        assert {"suggestions", "suggestion_scores"} <= set(sa.inspect(engine).get_table_names())
        downgrade(engine, "0004")
        assert schema_revision(engine) == "0004"
        tables = set(sa.inspect(engine).get_table_names())
        assert "suggestions" not in tables and "suggestion_scores" not in tables and "predictions" in tables
        migrate(engine)
        assert "suggestions" in set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_latest_suggestion_is_per_note_text_and_task_and_retention_prunes(database_url: str) -> None:
    engine = open_engine(database_url)
    migrate(engine)
    log = SuggestionLog(engine)
    try:
        one = note(spans=[("problem", *at("chest pain"))])
        old = datetime.now(UTC) - timedelta(days=10)
        assert (
            log.record([NewSuggestion("default", "v1", "labelstudio", "all", "p", "task-1", one)], now=old)
            == 1
        )
        assert log.record([NewSuggestion("default", "v1", "labelstudio", "all", "p", "task-1", one)]) == 0, (
            "repeat"
        )
        log.record([NewSuggestion("default", "v2", "labelstudio", "all", "p", "task-1", note())])
        log.record([NewSuggestion("default", "v3", "labelstudio", "all", "p", "task-2", one)])  # another note
        edited = note(text=NOTE + " Follow up.")
        log.record(
            [NewSuggestion("default", "v4", "labelstudio", "all", "p", "task-1", edited)]
        )  # other text
        found = log.latest("p", "task-1", text_hash(NOTE))
        assert (
            list(found) == ["all"] and found["all"].model_version == "v2" and not found["all"].document.spans
        )
        assert log.latest("q", "task-1", text_hash(NOTE)) == {}
        assert log.prune(retention_days=5) == 1
        assert [s.model_version for s in log.suggestions()] == ["v2", "v3", "v4"]
    finally:
        engine.dispose()


# --- through the protocols ---------------------------------------------------------------------------
def labelstudio_webhook(
    task_id: int, annotation_id: int, result: list[dict[str, Any]], user: int = 1
) -> dict:
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 3, "label_config": labelstudio_config()},
        "task": {"id": task_id, "data": {"text": NOTE}},
        "annotation": {"id": annotation_id, "completed_by": user, "result": result, "was_cancelled": False},
    }


def test_label_studio_predictions_are_logged_and_corrections_scored(client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    version = client.post("/setup").json()["model_version"]
    tasks = [{"id": 11, "data": {"text": NOTE}}, {"id": 12, "data": {"text": "Cough. No fever."}}]
    predictions = client.post("/predict", json={"tasks": tasks, "project": "3.1700000000"}).json()["results"]
    service.evidence.flush()
    logged = service.evidence.log.suggestions()
    assert {(s.project, s.document_id, s.model_version, s.tool) for s in logged} == {
        ("labelstudio-3", "task-11", version, "labelstudio"),
        ("labelstudio-3", "task-12", version, "labelstudio"),
    }
    first = next(s for s in logged if s.document_id == "task-11")
    assert len(first.document.spans) == sum(r["type"] == "labels" for r in predictions[0]["result"]) > 0
    assert "Aspirin" not in all_text(service.store.engine, "suggestions"), "no note text in the log"

    # The annotator keeps every suggestion but the first and adds one span.
    regions = [r for r in predictions[0]["result"] if r["type"] == "labels"]
    kept = [
        *regions[1:],
        {
            "id": "new1",
            "from_name": DEFAULT_CONFIG.from_name,
            "to_name": DEFAULT_CONFIG.to_name,
            "type": "labels",
            "value": {"start": 0, "end": 7, "text": "Patient", "labels": ["problem"]},
        },
    ]
    r = client.post("/webhook", json=labelstudio_webhook(11, 501, kept))
    assert r.json()["new"] == 1
    # a correction of a task nobody suggested anything for is not scored against another task
    client.post("/webhook", json=labelstudio_webhook(99, 502, kept))
    service.evidence.flush()
    [score] = service.evidence.log.scores()
    assert (score.document_id, score.model_version, score.suggestion_id) == ("task-11", version, first.id)
    outcomes = [sum(row[k] for row in score.figures["spans"].values()) for k in ("deleted", "missed")]
    assert outcomes == [1, 1]

    status = client.get("/status").json()["page"]["evidence"]
    assert status[version]["notes"] == 1 and status[version]["outcomes"]["deleted"] == 1
    assert status[version]["acceptance"]["rate"] == pytest.approx((len(regions) - 1) / len(regions), abs=1e-4)


def test_inception_predictions_are_logged_and_train_scores_them(client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    ts = predict_typesystem()
    request = predict_request(Document(id="d", text=NOTE), SPAN, ts)
    body = client.post("/inception/entities/predict", json=request).json()
    service.evidence.flush()
    [logged] = service.evidence.log.suggestions()
    assert (logged.project, logged.document_id, logged.task, logged.tool) == (
        "inception-0",
        "7",
        "entities",
        "inception",
    )
    assert logged.document.spans and NOTE not in all_text(service.store.engine, "suggestions")

    # The annotator accepts every suggestion: INCEpTION sends the CAS with them as annotations.
    cas = response_cas(body, request)
    accepted = cas_to_document(cas, DEFAULT_LAYERS)
    train = train_body(accepted, SPAN, ts, request, "ann1")
    assert client.post("/inception/entities/train", json=train).status_code == 204
    service.evidence.flush()
    [score] = service.evidence.log.scores()
    assert score.suggestion_id == logged.id and score.task == "entities" and score.annotator == "ann1"
    figures = summarize(notes_of([score]))
    assert figures["acceptance"]["rate"] == 1.0 and figures["edits_per_note"]["mean"] == 0.0


def test_agreement_report_has_model_vs_annotators_from_the_log(client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    version = client.post("/setup").json()["model_version"]
    tasks = [{"id": 21, "data": {"text": NOTE}}]
    [prediction] = client.post("/predict", json={"tasks": tasks, "project": 3}).json()["results"]
    regions = [r for r in prediction["result"] if r["type"] == "labels"]
    assert len(regions) >= 2
    client.post("/webhook", json=labelstudio_webhook(21, 601, regions, user=1))  # accepts all
    client.post("/webhook", json=labelstudio_webhook(21, 602, regions[1:], user=2))  # deletes one
    service.evidence.flush()
    report = client.get("/projects/labelstudio-3/agreement", params={"resamples": 50}).json()
    [versus] = report["model_vs_annotators"]
    assert versus["model"] == f"suggested:{version}" and versus["documents"] == 1
    per = versus["per_annotator"]
    assert per["user-1"]["spans_exact_f1"] == 1.0
    n = len(regions)
    assert per["user-2"]["spans_exact_f1"] == pytest.approx(2 * (n - 1) / (2 * (n - 1) + 1))
    # the annotators' own agreement is untouched by the model's table
    assert report["raters"] == ["user-1", "user-2"]
    html = client.get("/projects/labelstudio-3/agreement", params={"format": "html", "resamples": 50}).text
    assert "Model vs annotators" in html and f"suggested:{version}" in html


# --- the promotion gate on recently corrected notes --------------------------------------------------
def test_recent_notes_check_compares_with_what_the_promoted_model_suggested(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path}/db.sqlite3")
    migrate(engine)
    log = SuggestionLog(engine)
    gold = note(spans=[("problem", *at("chest pain")), ("drug", *at("Aspirin"))])
    gold.meta["correction"] = {"id": 7}
    log.record([NewSuggestion("default", "v1", "labelstudio", "all", "p", "task-1", gold)])
    [suggestion] = log.latest("p", "task-1", text_hash(NOTE)).values()
    log.add_score(suggestion, 7, "a", score_correction(suggestion.document, gold))
    worse = {7: note(spans=[("problem", *at("chest pain"))])}  # misses the drug: F1 0.667
    passes, reason, figures = recent_check(log, "v1", [gold], worse, 10, 0.0)
    assert not passes and "recently corrected" in reason and figures["promoted"] == 1.0
    assert figures["candidate"] == pytest.approx(0.6667, abs=1e-4) and figures["notes"] == 1
    assert recent_check(log, "v1", [gold], worse, 10, 0.5)[0], "within the margin"
    none = recent_check(log, "v2", [gold], worse, 10, 0.0)
    assert none[0] and "not checked" in none[1], "no suggestion of the promoted version: not checked"
    engine.dispose()


def test_the_gate_says_what_the_recent_notes_check_found(tmp_path: Path) -> None:
    sample = brat.read(SAMPLE_DIR)
    settings = Settings(
        model_dir=tmp_path / "models",
        trainer="kiwi.lexicon.v1",
        retrain_debounce_seconds=0.0,
        heldout_fraction=0.5,
        promotion_margin=1.0,  # the main gate passes whatever the scores
        gate_recent_notes=5,
    )
    store = CorrectionStore(f"sqlite:///{tmp_path}/c.sqlite3")
    model_versions = ModelVersions(settings.model_dir)
    with model_versions.staging() as tmp:
        LexiconExtractor.train(sample).save(tmp)
        best = model_versions.add(tmp)
    model_versions.promote(best)
    evidence = Evidence(settings, store.engine)
    promoted = LexiconExtractor.load(model_versions.current())
    notes = sample[1:3]
    shown = promoted.predict([d.without_annotations() for d in notes])
    evidence.record(
        [
            NewSuggestion("default", best, "labelstudio", "all", "proj", d.id, p)
            for d, p in zip(notes, shown, strict=True)
        ]
    )
    for d in notes:
        evidence.score("proj", d.id, store.add("proj", d.id, "ann", "labelstudio", d))
    evidence.flush()
    evidence.close()
    rt = Retrainer(settings, store, model_versions, corpora=Corpora(seed=sample[:1], dev=sample[3:]))
    try:
        job = rt.wait(rt.request("proj", delay=0), timeout=60)
    finally:
        rt.shutdown()
        store.close()
    assert job.state == "finished", job.message
    assert job.metrics["recent"]["notes"] == 1  # one of the two corrected notes is held out
    assert "most recently corrected held-out note" in job.metrics["reason"]


def test_precompute_logs_what_it_pushes_to_label_studio(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from recommender.cli import precompute
    from recommender.service import labelstudio_client
    from recommender.store.predictions import PredictionCache

    tasks = [{"id": 31, "data": {"text": NOTE}}, {"id": 32, "data": {"text": "Cough. No fever."}}]

    def fake(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/projects/5/":
            return httpx.Response(200, json={"id": 5, "label_config": labelstudio_config()})
        if request.url.path == "/api/tasks/":
            page = int(request.url.params["page"])
            return httpx.Response(200, json={"tasks": tasks}) if page == 1 else httpx.Response(404, json={})
        if request.url.path == "/api/predictions/":
            return httpx.Response(201, json={"id": 1})
        return httpx.Response(404, json={})

    real = labelstudio_client.LabelStudioClient
    monkeypatch.setattr(
        labelstudio_client,
        "LabelStudioClient",
        lambda url, token: real(url, token, transport=httpx.MockTransport(fake)),
    )
    engine = open_engine(f"sqlite:///{tmp_path}/db.sqlite3")
    migrate(engine)
    extractor = LexiconExtractor.load(model_dir)
    ahead = precompute.Ahead(PredictionCache(engine), "default", extractor, 1)
    settings = Settings(
        model_dir=tmp_path, label_studio_url="http://ls.test", label_studio_token="legacy-key"
    )
    log = SuggestionLog(engine)
    precompute._label_studio(ahead, settings, 5, tmp_path / "position.json", log)
    logged = log.suggestions("labelstudio-5")
    assert [(s.document_id, s.tool, s.model_version) for s in logged] == [
        ("task-31", "precompute", extractor.version),
        ("task-32", "precompute", extractor.version),
    ]
    assert logged[0].document.spans and logged[0].text_hash == text_hash(NOTE)
    engine.dispose()


def test_kiwi_agreement_adds_the_logged_suggestions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gold = note(spans=[("negation", *at("denies")), ("problem", *at("chest pain")), ("drug", *at("Aspirin"))])
    for annotator, spans in (("ann1", gold.spans), ("ann2", gold.spans[:2])):
        brat.write([replace(gold, id="note1", spans=list(spans))], tmp_path / annotator)
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    engine = open_engine(url)
    migrate(engine)
    suggested = replace(gold, spans=gold.spans[1:])  # missed the negation
    SuggestionLog(engine).record(
        [NewSuggestion("default", "v7", "labelstudio", "all", "p", "task-9", suggested)]
    )
    engine.dispose()
    monkeypatch.setenv("KIWI_DATABASE_URL", url)
    run = run_kiwi(
        "agreement",
        str(tmp_path / "ann1"),
        str(tmp_path / "ann2"),
        "--json",
        "--suggestions",
        "all",
        "--resamples",
        "20",
    )
    assert run.returncode == 0, run.stderr
    [versus] = json.loads(run.stdout)["model_vs_annotators"]
    assert versus["model"] == "suggested:v7" and versus["documents"] == 1
    assert versus["per_annotator"]["ann1"]["spans_exact_f1"] == pytest.approx(0.8)  # 2 of 3
    assert versus["per_annotator"]["ann2"]["spans_exact_f1"] == pytest.approx(0.5)  # 1 of 2 and 1 spurious


def test_inception_relation_suggestions_are_scored_on_relations_only(client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    gold = brat.read(SAMPLE_DIR)[0]
    assert gold.relations, "a sample note with relations"
    ts = predict_typesystem()
    spans_only = Document(gold.id, gold.text, spans=list(gold.spans))
    request = predict_request(spans_only, REL, ts)
    assert client.post("/inception/relations/predict", json=request).status_code == 200
    service.evidence.flush()
    [logged] = service.evidence.log.suggestions()
    assert logged.task == "relations" and logged.document.relations
    train = train_body(gold, REL, ts, request, "u")
    assert client.post("/inception/relations/train", json=train).status_code == 204
    service.evidence.flush()
    [score] = service.evidence.log.scores()
    assert score.suggestion_id == logged.id and set(score.figures["tasks"]) == {"re"}
    assert "spans" not in score.figures  # the spans were the annotator's own
    rel = score.figures["relations"]
    assert rel["accepted"] + rel["deleted"] == len(logged.document.relations)
    assert rel["accepted"] + rel["missed"] == len(gold.relations)
    assert score.figures["edits"]["total"] == rel["deleted"] + rel["missed"]
