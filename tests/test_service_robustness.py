"""Bad input gets a clear 4xx and the service stays up; no note text in logs; auth; settings."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from recommender.cli import app as cli
from recommender.corpora import SAMPLE_DIR
from recommender.document import Document
from recommender.errors import ConfigError
from recommender.extractors.lexicon import LexiconExtractor
from recommender.formats import brat
from recommender.formats.xmi import PREDICTED, document_to_cas, project_typesystem
from recommender.service import create_app
from recommender.settings import Settings, load_settings

SECRET_PHRASE = "Zyxwv Qutsr has crushing chest pain"  # stands in for PHI
TOKEN = "a-long-enough-bearer-token"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "lexicon"
    LexiconExtractor.train(brat.read(SAMPLE_DIR)).save(folder)
    return folder


def settings(tmp_path: Path, model_dir: Path, **values: Any) -> Settings:
    return Settings(**({"model": model_dir, "model_dir": tmp_path / "models", "retrain": False} | values))


@pytest.fixture
def client(tmp_path: Path, model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path, model_dir)), raise_server_exceptions=False) as c:
        yield c


def inception_request(text: str, *, typesystem_xml: str | None = None, xmi: str | None = None) -> dict:
    ts = project_typesystem()
    return {
        "typeSystem": typesystem_xml or ts.to_xml(),
        "document": {"xmi": xmi or document_to_cas(Document("n", text), ts).to_xmi(), "documentId": 1},
        "metadata": {"layer": "webanno.custom.ClinicalEntity", "feature": "label", "projectId": 0},
        "unknownKey": {"from": "a future INCEpTION"},
    }


BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<typeSystemDescription xmlns="http://uima.apache.org/resourceSpecifier"><types/>&lol2;</typeSystemDescription>"""
XXE = """<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xmi:XMI xmlns:xmi="http://www.omg.org/XMI" xmi:version="2.0">&xxe;</xmi:XMI>"""


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"typeSystem": BOMB}, 400),
        ({"typeSystem": "<typeSystemDescription"}, 400),
        ({"typeSystem": "<html/>"}, 400),
        ({"document": {"xmi": XXE}}, 400),
        ({"document": {"xmi": "<xmi:XMI xmlns:xmi='http://www.omg.org/XMI'><unclosed></xmi:XMI>"}}, 400),
        ({"document": {"xmi": "not xml at all"}}, 400),
        ({"metadata": {"layer": 5}}, 422),
        ({"document": None}, 422),
    ],
)
def test_bad_inception_requests_get_a_clear_4xx(client: TestClient, change: dict, status: int) -> None:
    request = inception_request(SECRET_PHRASE) | change
    r = client.post("/inception/entities/predict", json=request)
    assert r.status_code == status, r.text
    assert SECRET_PHRASE not in r.text
    assert client.get("/health").status_code == 200


def test_malformed_json_is_400_and_echoes_nothing(client: TestClient) -> None:
    r = client.post(
        "/inception/entities/predict",
        content=('{"typeSystem": "' + SECRET_PHRASE).encode(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and SECRET_PHRASE not in r.text
    r = client.post("/predict", json={"tasks": SECRET_PHRASE})
    assert r.status_code == 422 and SECRET_PHRASE not in r.text
    r = client.post("/predict", json={"tasks": [], "label_config": "<!DOCTYPE x [<!ENTITY a 'b'>]><View/>"})
    assert r.status_code == 400


def test_type_system_without_the_layer_and_without_prediction_features(client: TestClient) -> None:
    ts_xml = project_typesystem().to_xml().replace("webanno.custom.ClinicalEntity", "webanno.custom.Other")
    request = inception_request("Chest pain.", typesystem_xml=ts_xml)
    r = client.post("/inception/entities/predict", json=request)
    assert r.status_code == 200 and r.json()["document"] == request["document"]["xmi"]
    plain = inception_request("Patient denies chest pain. Took aspirin.")
    document = client.post("/inception/entities/predict", json=plain).json()["document"]
    assert f'{PREDICTED}="true"' in document and "label_score_explanation" in document


def test_empty_and_huge_notes(tmp_path: Path, model_dir: Path) -> None:
    with TestClient(create_app(settings(tmp_path, model_dir, max_request_bytes=20_000))) as c:
        assert c.post("/inception/entities/predict", json=inception_request("")).status_code == 200
        r = c.post("/inception/entities/predict", json=inception_request("chest pain. " * 5000))
        assert r.status_code == 413
        chunks = (b"x" * 1000 for _ in range(50))  # no Content-Length: chunked transfer
        r = c.post("/predict", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.get("/health").status_code == 200


def test_concurrent_train_calls_all_answer_and_store_once(client: TestClient, fixtures_dir: Path) -> None:
    request = json.loads((fixtures_dir / "inception/synthetic/train_request.json").read_text())
    statuses: list[int] = []

    def call() -> None:
        statuses.append(client.post("/inception/entities/train", json=request).status_code)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(statuses)) == [204]
    assert len(client.app.state.service.store.history("inception-1", "100")) == 1


def test_no_note_text_in_logs(
    client: TestClient, fixtures_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = client.app.state.service.store
    # Each call below must have done its work (predicted, refused, stored), or a clean log proves nothing.
    r = client.post("/inception/entities/predict", json=inception_request(SECRET_PHRASE))
    assert r.status_code == 200 and f'{PREDICTED}="true"' in r.json()["document"], "chest pain suggested"
    bomb = client.post(
        "/inception/entities/predict", json=inception_request(SECRET_PHRASE) | {"typeSystem": BOMB}
    )
    assert bomb.status_code == 400
    train = client.post(
        "/inception/entities/train",
        json={
            "typeSystem": project_typesystem().to_xml(),
            "documents": [
                {
                    "xmi": document_to_cas(Document("n", SECRET_PHRASE), project_typesystem()).to_xmi(),
                    "documentId": 3,
                }
            ],
            "metadata": {"layer": "webanno.custom.ClinicalEntity", "feature": "label", "projectId": 0},
        },
    )
    assert train.status_code == 204 and [d.text for d in store.latest("inception-0")] == [SECRET_PHRASE]
    task = {"id": 1, "data": {"text": SECRET_PHRASE}}
    results = client.post("/predict", json={"tasks": [task, {"id": 2, "data": {}}]}).json()["results"]
    assert [x["value"]["text"] for x in results[0]["result"] if "value" in x], "regions predicted"
    created = json.loads((fixtures_dir / "labelstudio/webhook_ANNOTATION_CREATED.json").read_text())["body"]
    created["task"]["data"]["text"] = SECRET_PHRASE + " " * 80
    assert client.post("/webhook", json=created).json() == {"status": "stored", "new": 1}
    assert caplog.records, "the calls above do log"
    assert "Zyxwv" not in caplog.text and "crushing" not in caplog.text


@pytest.mark.parametrize("scheme", ["bearer", "basic", "both"])
def test_auth_on_every_endpoint(tmp_path: Path, model_dir: Path, scheme: str) -> None:
    values: dict[str, Any] = {}
    if scheme in ("bearer", "both"):
        values["auth_token"] = TOKEN
    if scheme in ("basic", "both"):
        values |= {"basic_auth_user": "ls", "basic_auth_password": "pw"}
    good = {"bearer": f"Bearer {TOKEN}", "basic": "Basic " + base64.b64encode(b"ls:pw").decode()}
    with TestClient(create_app(settings(tmp_path, model_dir, **values))) as c:
        for method, path in [
            ("GET", "/health"),
            ("POST", "/setup"),
            ("GET", "/docs"),
            ("GET", "/metrics"),
            ("POST", "/inception/entities/predict"),
            ("POST", "/webhook"),
            ("GET", "/models"),
        ]:
            assert c.request(method, path).status_code == 401, path
            assert (
                c.request(method, path, headers={"Authorization": "Bearer wrong-token-xxxxxxxxx"}).status_code
                == 401
            )
            bad_basic = "Basic " + base64.b64encode(b"ls:nope").decode()
            assert c.request(method, path, headers={"Authorization": bad_basic}).status_code == 401
        for kind, header in good.items():
            accepted = scheme in (kind, "both")
            assert (c.get("/health", headers={"Authorization": header}).status_code == 200) == accepted
        r = c.get("/health")
        assert r.headers["www-authenticate"]


def test_settings_refuse_unsafe_values_and_warn(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="basic auth"):
        load_settings(basic_auth_user="x")
    with pytest.raises(ConfigError, match="16 characters"):
        load_settings(auth_token="short")
    assert Settings(host="0.0.0.0").unsafe_reasons()
    assert not Settings(host="0.0.0.0", auth_token=TOKEN).unsafe_reasons()
    assert not Settings().unsafe_reasons()


def test_no_model_means_503_for_predictions_and_a_hint_from_the_cli(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(model_dir=tmp_path / "empty", retrain=False))) as c:
        assert c.get("/health").status_code == 200
        r = c.post("/predict", json={"tasks": [{"data": {"text": "x"}}]})
        assert r.status_code == 503 and "--bootstrap" in r.json()["detail"]
    result = CliRunner().invoke(cli, ["serve", "--model-dir", str(tmp_path / "empty")])
    assert result.exit_code != 0 and "--bootstrap" in str(result.exception)


def test_admin_promote_and_rollback_swap_the_served_model(tmp_path: Path, model_dir: Path) -> None:
    from recommender.model_versions import ModelVersions

    model_versions = ModelVersions(tmp_path / "models")
    first = model_versions.add(model_dir)
    model_versions.promote(first)
    LexiconExtractor.train(brat.read(SAMPLE_DIR)[:2]).save(tmp_path / "second")
    second = model_versions.add(tmp_path / "second")
    with TestClient(create_app(Settings(model_dir=tmp_path / "models", retrain=False))) as c:
        assert c.post("/setup").json()["model_version"] == first
        assert c.post(f"/models/{second}/promote").json()["serving"] == second
        assert c.post("/setup").json()["model_version"] == second
        assert c.post("/models/rollback").json()["serving"] == first
        assert c.post("/models/nope/promote").status_code == 404
        assert {v["version"] for v in c.get("/models").json()["versions"]} == {first, second}


def test_a_batch_past_its_time_budget_is_answered_with_the_tasks_done(
    tmp_path: Path, model_dir: Path
) -> None:
    from recommender.service.predicting import CHUNK

    tasks = [{"id": k, "data": {"text": "Patient denies chest pain."}} for k in range(3 * CHUNK)]
    with TestClient(create_app(settings(tmp_path, model_dir, predict_budget_seconds=0))) as c:
        results = c.post("/predict", json={"tasks": tasks}).json()["results"]
        assert len(results) == CHUNK  # the first chunk always runs; the rest wait for Label Studio to ask
        assert all(r["result"] for r in results)
    with TestClient(create_app(settings(tmp_path, model_dir))) as c:
        assert len(c.post("/predict", json={"tasks": tasks}).json()["results"]) == len(tasks)
