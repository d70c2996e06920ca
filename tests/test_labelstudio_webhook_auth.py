"""The backend gives Label Studio's webhooks to ``/webhook`` its credentials (they are created without)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from recommender.corpora import SAMPLE_DIR
from recommender.extractors.lexicon import LexiconExtractor
from recommender.formats import brat
from recommender.retraining import Corpora
from recommender.service import create_app
from recommender.service.labelstudio_client import LabelStudioClient, backend_authorization
from recommender.settings import Settings

PASSWORD = "s3cret-pass-word"
BASIC = "Basic " + base64.b64encode(f"kiwi:{PASSWORD}".encode()).decode()
OURS = "http://kiwi.test:5000"


class FakeLabelStudio:
    """ML backends and webhooks of project 1: ours (user kiwi), another backend's, and a custom one."""

    def __init__(self, *, fail_list: bool = False) -> None:
        self.fail_list = fail_list
        self.calls: list[tuple[str, str]] = []
        self.patches: dict[int, dict[str, Any]] = {}
        self.backends = [
            {"id": 1, "url": f"{OURS}/", "auth_method": "BASIC_AUTH", "basic_auth_user": "kiwi"},
            {"id": 2, "url": "http://other.test", "auth_method": "BASIC_AUTH", "basic_auth_user": "bob"},
        ]
        self.webhooks = [
            {"id": 7, "url": f"{OURS}/webhook", "headers": {}, "actions": [], "send_for_all_actions": True},
            {"id": 8, "url": "http://other.test/webhook", "headers": {}, "actions": []},
            {
                "id": 9,
                "url": "http://audit.test/hook",
                "headers": {"X-Key": "k"},
                "actions": ["TASKS_CREATED"],
            },
            {
                "id": 10,
                "url": f"{OURS}/webhook",
                "headers": {"X-Trace": "1", "authorization": "Basic stale"},
                "actions": ["ANNOTATION_CREATED"],
            },
        ]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append((request.method, path))
        assert request.headers["authorization"] == "Token legacy-key", "our calls use the LS token"
        if request.method == "GET" and path == "/api/ml/":
            assert request.url.params["project"] == "1"
            return httpx.Response(200, json=self.backends)
        if request.method == "GET" and path == "/api/webhooks/":
            assert request.url.params["project"] == "1"
            if self.fail_list:
                return httpx.Response(500, text="boom")
            return httpx.Response(200, json=self.webhooks)
        if request.method == "PATCH" and path.startswith("/api/webhooks/"):
            hook_id = int(path.strip("/").split("/")[-1])
            self.patches[hook_id] = json.loads(request.content)
            return httpx.Response(200, json={"id": hook_id, **self.patches[hook_id]})
        return httpx.Response(404)


def ls_client(fake: FakeLabelStudio) -> LabelStudioClient:
    return LabelStudioClient("http://ls.test", "legacy-key", transport=httpx.MockTransport(fake))


def test_only_this_backends_webhooks_get_the_header_once(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeLabelStudio()
    client = ls_client(fake)
    with caplog.at_level(logging.INFO):
        assert client.authorize_webhooks(1, BASIC, basic_user="kiwi") == 2
    assert set(fake.patches) == {7, 10}, "never the other backend's or a custom webhook"
    assert fake.patches[7] == {"url": f"{OURS}/webhook", "headers": {"Authorization": BASIC}, "actions": []}
    assert fake.patches[10]["headers"] == {"X-Trace": "1", "Authorization": BASIC}, (
        "others kept, stale one replaced"
    )
    assert fake.patches[10]["actions"] == ["ANNOTATION_CREATED"]
    calls = len(fake.calls)
    assert client.authorize_webhooks(1, BASIC, basic_user="kiwi") == 0
    assert len(fake.calls) == calls, "once per project"
    assert "2 webhook(s)" in caplog.text and PASSWORD not in caplog.text and BASIC not in caplog.text


def test_bearer_only_needs_a_single_backend_and_failures_log_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeLabelStudio()
    assert ls_client(fake).authorize_webhooks(1, "Bearer tok-0123456789abcdef", basic_user=None) == 0
    assert fake.patches == {}, "two backends: cannot tell which one is us"
    fake.backends = fake.backends[:1]
    assert ls_client(fake).authorize_webhooks(1, "Bearer tok-0123456789abcdef", basic_user=None) == 2
    caplog.clear()
    failing = FakeLabelStudio(fail_list=True)
    with caplog.at_level(logging.INFO):
        assert ls_client(failing).authorize_webhooks(1, BASIC, basic_user="kiwi") == 0
    [record] = [r for r in caplog.records if r.name == "recommender.service.labelstudio_client"]
    assert record.levelname == "WARNING" and "[500]" in record.getMessage()
    assert PASSWORD not in caplog.text and failing.patches == {}


def test_backend_authorization_prefers_basic_auth(tmp_path: Path) -> None:
    token = "t" * 20
    both = Settings(
        model_dir=tmp_path, basic_auth_user="kiwi", basic_auth_password=PASSWORD, auth_token=token
    )
    assert backend_authorization(both) == BASIC
    assert backend_authorization(Settings(model_dir=tmp_path, auth_token=token)) == f"Bearer {token}"
    assert backend_authorization(Settings(model_dir=tmp_path)) is None


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "lexicon"
    LexiconExtractor.train(brat.read(SAMPLE_DIR)[:3]).save(folder)
    return folder


def predict_request() -> dict[str, Any]:
    return {"tasks": [{"id": 1, "data": {"text": "Aspirin for chest pain."}}], "project": "1.1700000000"}


def connected_settings(tmp_path: Path, model_dir: Path, **auth: Any) -> Settings:
    """A backend connected to the fake Label Studio, pinning off, with the given auth settings."""
    return Settings(
        model=model_dir,
        model_dir=tmp_path / "models",
        retrain=False,
        label_studio_url="http://ls.test",
        label_studio_token="legacy-key",
        label_studio_pin_model_version=False,
        **auth,
    )


def test_predict_makes_the_webhook_pass_auth(tmp_path: Path, model_dir: Path) -> None:
    settings = connected_settings(tmp_path, model_dir, basic_auth_user="kiwi", basic_auth_password=PASSWORD)
    fake = FakeLabelStudio()
    with TestClient(create_app(settings, corpora=Corpora([], []))) as c:
        c.app.state.service.labelstudio = ls_client(fake)
        event = {"action": "TASKS_CREATED", "project": {"id": 1}}
        assert c.post("/webhook", json=event).status_code == 401, "LS's own webhook has no credentials"
        assert c.post("/predict", json=predict_request(), headers={"Authorization": BASIC}).status_code == 200
        sent = fake.patches[7]["headers"]
        assert c.post("/webhook", json=event, headers=sent).status_code == 200
        c.post("/predict", json=predict_request(), headers={"Authorization": BASIC})
    assert [m for m, _ in fake.calls].count("PATCH") == 2, "second predict: cached, no calls"


def test_no_auth_configured_leaves_webhooks_alone(tmp_path: Path, model_dir: Path) -> None:
    settings = connected_settings(tmp_path, model_dir)
    fake = FakeLabelStudio()
    with TestClient(create_app(settings, corpora=Corpora([], []))) as c:
        c.app.state.service.labelstudio = ls_client(fake)
        assert c.post("/predict", json=predict_request()).status_code == 200
    assert fake.calls == []
