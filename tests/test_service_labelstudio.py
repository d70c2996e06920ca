"""Label Studio ML backend protocol with the bodies recorded from Label Studio 1.23.2."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient

from recommender.corpora import SAMPLE_DIR
from recommender.errors import ConfigError
from recommender.extractors.lexicon import LexiconExtractor
from recommender.formats import brat
from recommender.guidelines import labelstudio_config
from recommender.retraining import Corpora
from recommender.service import create_app
from recommender.service.labelstudio_client import LabelStudioClient
from recommender.settings import Settings


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "lexicon"
    LexiconExtractor.train(brat.read(SAMPLE_DIR)).save(folder)
    return folder


def make_client(tmp_path: Path, model_dir: Path, **settings: Any) -> TestClient:
    values: dict[str, Any] = {"model": model_dir, "model_dir": tmp_path / "models", "retrain": False}
    app = create_app(Settings(**(values | settings)), corpora=Corpora([], []))
    return TestClient(app)


@pytest.fixture
def client(tmp_path: Path, model_dir: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, model_dir) as c:
        yield c


def body(fixtures_dir: Path, name: str) -> dict[str, Any]:
    data = json.loads((fixtures_dir / "labelstudio" / name).read_text(encoding="utf-8"))
    return data["body"] if "body" in data and "headers" in data else data


def test_health_and_setup_are_fast_json_and_idempotent(client: TestClient, fixtures_dir: Path) -> None:
    t0 = time.perf_counter()
    health = client.get("/health")
    setups = [client.post("/setup", json=body(fixtures_dir, "setup_request.json")) for _ in range(3)]
    assert time.perf_counter() - t0 < 1.0
    assert health.status_code == 200 and health.json()["status"] == "UP"
    versions = {r.json()["model_version"] for r in setups}
    assert versions == {health.json()["model_version"]} and None not in versions


def test_predict_batch_follows_the_protocol(client: TestClient, fixtures_dir: Path) -> None:
    request = body(fixtures_dir, "predict_request_batch.json")
    version = client.post("/setup").json()["model_version"]
    r = client.post("/predict", json=request)
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == len(request["tasks"])
    config_labels = {"problem", "test", "drug", "treatment", "negation", "bodyloc"}  # the fixture config
    for task, prediction in zip(request["tasks"], results, strict=True):
        text = task["data"]["text"]
        assert prediction["model_version"] == version
        assert 0.0 <= prediction["score"] <= 1.0
        regions = [x for x in prediction["result"] if x["type"] == "labels"]
        ids = [x["id"] for x in regions]
        assert len(set(ids)) == len(ids)
        for x in regions:
            assert (x["from_name"], x["to_name"]) == ("label", "text")
            assert x["value"]["text"] == text[x["value"]["start"] : x["value"]["end"]]
            assert set(x["value"]["labels"]) <= config_labels and 0 <= x["score"] <= 1
        for rel in (x for x in prediction["result"] if x["type"] == "relation"):
            assert rel["from_id"] in ids and rel["to_id"] in ids and rel["labels"] == ["hasAttr"]
    texts = [[x["value"]["text"] for x in p["result"] if x["type"] == "labels"] for p in results]
    assert "aspirin" in texts[0] and "lisinopril" not in texts[0], "results stay in task order"


def test_labels_outside_the_config_are_never_sent(
    client: TestClient, fixtures_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    request = body(fixtures_dir, "predict_request_batch.json")
    request["tasks"][0]["data"]["text"] = "Aspirin 81 mg PO daily for chest pain."
    full = client.post("/predict", json=request | {"label_config": labelstudio_config()}).json()
    sent_full = {
        lab for x in full["results"][0]["result"] if x["type"] == "labels" for lab in x["value"]["labels"]
    }
    assert sent_full - {"problem", "drug", "negation", "bodyloc", "test", "treatment"}, "e.g. strength, route"
    narrow = client.post("/predict", json=request).json()
    sent = {
        lab for x in narrow["results"][0]["result"] if x["type"] == "labels" for lab in x["value"]["labels"]
    }
    assert sent and sent <= {"problem", "test", "drug", "treatment", "negation", "bodyloc"}
    assert "config lacks" in caplog.text


def test_empty_and_textless_tasks_still_get_their_entry(client: TestClient, fixtures_dir: Path) -> None:
    request = body(fixtures_dir, "predict_request_batch.json")
    request["tasks"][0]["data"]["text"] = ""
    del request["tasks"][1]["data"]["text"]
    results = client.post("/predict", json=request).json()["results"]
    assert len(results) == 3
    assert results[0]["result"] == [] and results[1]["result"] == [] and results[2]["result"]


def test_interactive_and_repredict_requests(client: TestClient, fixtures_dir: Path) -> None:
    version = client.post("/setup").json()["model_version"]
    for name in ("predict_request_interactive.json", "predict_request_tasks_with_old_predictions.json"):
        request = body(fixtures_dir, name)
        r = client.post("/predict", json=request)
        assert r.status_code == 200
        results = r.json()["results"]
        assert len(results) == len(request["tasks"])
        for task, prediction in zip(request["tasks"], results, strict=True):
            # this model's predictions, not the old ones the request carries back (version "v1")
            assert prediction["model_version"] == version != task["predictions"][0]["model_version"]
            text = task["data"]["text"]
            regions = [x for x in prediction["result"] if x["type"] == "labels"]
            assert regions, f"{name}: task {task['id']} got no regions"
            for x in regions:
                assert x["value"]["text"] == text[x["value"]["start"] : x["value"]["end"]]
        # "CT of the abdomen showed no fever-related findings; started aspirin."
        first = {(x["value"]["text"], *x["value"]["labels"]) for x in results[0]["result"] if "value" in x}
        assert {("fever", "problem"), ("aspirin", "drug"), ("no", "negation")} <= first, name


def test_uncertain_notes_score_lower(client: TestClient, fixtures_dir: Path) -> None:
    request = body(fixtures_dir, "predict_request_batch.json")
    known = brat.read(SAMPLE_DIR)[0].text
    request["tasks"] = [
        {"id": 1, "data": {"text": known}},
        {"id": 2, "data": {"text": "Zorblat quux frobnicated."}},
    ]
    scores = [p["score"] for p in client.post("/predict", json=request).json()["results"]]
    assert scores[0] > scores[1], "uncertainty sampling hands out the unfamiliar note first"


def test_webhooks_store_update_delete_and_ignore(client: TestClient, fixtures_dir: Path) -> None:
    store = client.app.state.service.store
    for action in ("TASKS_CREATED", "PROJECT_UPDATED"):
        r = client.post("/webhook", json=body(fixtures_dir, f"webhook_{action}.json"))
        assert r.status_code == 200 and r.json()["status"] == "ignored"
    created = body(fixtures_dir, "webhook_ANNOTATION_CREATED.json")
    assert client.post("/webhook", json=created).json() == {"status": "stored", "new": 1}
    assert client.post("/webhook", json=created).json()["new"] == 0, "resend deduplicated"
    [doc] = store.latest("labelstudio-1")
    assert {s.label for s in doc.spans} >= {"negation", "problem"} and doc.relations
    updated = body(fixtures_dir, "webhook_ANNOTATION_UPDATED.json")
    client.post("/webhook", json=updated)
    assert len(store.history("labelstudio-1", "annotation-1")) == 1 + (
        updated["annotation"]["result"] != created["annotation"]["result"]
    )
    r = client.post("/webhook", json=body(fixtures_dir, "webhook_ANNOTATIONS_DELETED.json"))
    assert r.json()["removed"] == 1 and store.latest("labelstudio-1") == []
    assert client.post("/webhook", json={"no": "action"}).status_code == 400
    malformed = client.post("/webhook", content=b"[1, 2", headers={"content-type": "application/json"})
    assert malformed.status_code == 400


def test_start_training_and_legacy_train_queue_jobs(
    tmp_path: Path, model_dir: Path, fixtures_dir: Path
) -> None:
    with make_client(tmp_path, model_dir, retrain=True, retrain_debounce_seconds=3600) as c:
        t0 = time.perf_counter()
        r = c.post("/webhook", json=body(fixtures_dir, "webhook_START_TRAINING.json"))
        assert r.status_code == 200 and time.perf_counter() - t0 < 1.0
        status = c.app.state.service.retrainer.status()
        assert [j["project"] for j in status["queued"]] == ["labelstudio-1"]
        r = c.post("/train", json=body(fixtures_dir, "train_request_legacy.json"))
        assert r.status_code == 200 and r.json()["new"] == 1 and r.json()["job"] is not None
        assert c.get("/versions").json()["versions"][0] == c.post("/setup").json()["model_version"]
        metrics = c.get("/metrics").json()
        assert metrics["requests"]["POST /webhook"]["requests"] == 1
        assert metrics["retraining"]["queued"]


def jwt_token(token_type: str) -> str:
    """A token of Label Studio's shape (the SDK reads its type and expiry, not its signature)."""
    return jwt.encode({"token_type": token_type, "exp": int(time.time()) + 3600}, "k" * 32, algorithm="HS256")


REFRESH, ACCESS = jwt_token("refresh"), jwt_token("access")


class FakeLabelStudio:
    """Label Studio's API as the backend calls it: token refresh, export, project PATCH."""

    def __init__(self, tasks: list[dict[str, Any]], refuse_pins: int) -> None:
        self.tasks = tasks
        self.refuse_pins = refuse_pins
        self.calls: list[tuple[str, str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path, request.headers.get("authorization")))
        if request.method == "POST" and request.url.path == "/api/token/refresh/":
            assert json.loads(request.content) == {"refresh": REFRESH}
            return httpx.Response(200, json={"access": ACCESS})
        if request.url.path == "/api/projects/1/export":
            assert request.url.params["export_type"] == "JSON"
            return httpx.Response(200, json=self.tasks)
        if request.method == "PATCH" and request.url.path == "/api/projects/1/":
            assert json.loads(request.content).keys() == {"model_version"}, "nothing else of the project"
            if self.refuse_pins > 0:
                self.refuse_pins -= 1
                return httpx.Response(400, json={"detail": "Model version doesn't exist"})
            return httpx.Response(
                200, json={"id": 1, "model_version": json.loads(request.content)["model_version"]}
            )
        return httpx.Response(404)


def test_start_training_pulls_annotations_and_predict_pins_the_version(
    tmp_path: Path, model_dir: Path, fixtures_dir: Path
) -> None:
    task = body(fixtures_dir, "train_request_legacy.json")["annotations"][0]
    fake = FakeLabelStudio([task], refuse_pins=1)
    with make_client(tmp_path, model_dir, label_studio_url="http://ls.test", label_studio_token=REFRESH) as c:
        service = c.app.state.service
        service.labelstudio = LabelStudioClient(
            "http://ls.test", REFRESH, transport=httpx.MockTransport(fake)
        )
        c.post("/webhook", json=body(fixtures_dir, "webhook_START_TRAINING.json"))
        assert len(service.store.latest("labelstudio-1")) == 1, "pulled through the export API"
        assert ("GET", "/api/projects/1/export", f"Bearer {ACCESS}") in fake.calls
        c.post("/predict", json=body(fixtures_dir, "predict_request_batch.json"))
    pins = [call for call in fake.calls if call[0] == "PATCH"]
    assert {auth for _, _, auth in pins} == {f"Bearer {ACCESS}"}
    assert [call[1] for call in fake.calls].count("/api/token/refresh/") == 1, "the access token is reused"
    assert len(pins) == 2, "refused once (no predictions stored yet), then pinned"


def test_precompute_calls_page_through_tasks_and_name_refusals() -> None:
    """What ``kiwi precompute --label-studio`` asks: the config, every task page by page, a prediction
    per task; a refusal or an unreachable Label Studio is a ConfigError naming the status."""
    calls: list[str] = []
    posted: list[dict[str, Any]] = []

    def fake(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}?{request.url.query.decode()}")
        assert request.headers["authorization"] == "Token legacy-key"
        if request.url.path == "/api/projects/1/":
            return httpx.Response(200, json={"id": 1, "label_config": "<View/>"})
        if request.url.path == "/api/projects/2/":
            return httpx.Response(403, json={"detail": "forbidden"})
        if request.url.path == "/api/tasks/":
            page = int(request.url.params["page"])
            if page > 2:
                return httpx.Response(404, json={"detail": "Invalid page."})
            tasks = [{"id": 2 * page + i, "data": {"text": f"note {page}.{i}"}} for i in range(2)]
            return httpx.Response(200, json={"tasks": tasks, "total": 4})
        if request.method == "POST" and request.url.path == "/api/predictions/":
            posted.append(json.loads(request.content))
            return httpx.Response(201, json={"id": 90 + posted[-1]["task"]})
        return httpx.Response(404, json={})

    client = LabelStudioClient("http://ls.test/", "legacy-key", transport=httpx.MockTransport(fake))
    assert client.project(1)["label_config"] == "<View/>"
    assert client.tasks(1, page_size=2) == [
        {"id": i, "data": {"text": f"note {i // 2}.{i % 2}"}} for i in (2, 3, 4, 5)
    ]
    assert calls[1:] == [
        f"GET /api/tasks/?fields=task_only&page={p}&page_size=2&project=1" for p in (1, 2, 3)
    ], "page by page until Label Studio answers 404"
    prediction = {"model_version": "v1", "score": 0.5, "result": []}
    assert client.create_prediction(4, prediction) == 94
    assert posted == [{"task": 4, **prediction}]
    with pytest.raises(ConfigError, match=r"project \[2\] answered \[403\]"):
        client.project(2)

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    down = LabelStudioClient("http://ls.test", "legacy-key", transport=httpx.MockTransport(unreachable))
    with pytest.raises(ConfigError, match=r"tasks of project \[1\] answered \[ConnectError\]"):
        down.tasks(1)
    assert down.pin_model_version(1, "v1") is False, "pinning logs and gives up"
