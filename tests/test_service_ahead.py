"""A tiny random LLaMA served beside a lexicon: its predictions come from the prediction cache,
filled in the background; a miss is answered within the budget by the lexicon, marked as a fallback;
failures are retried a bounded number of times and reported; the cache survives a restart."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cassis import Cas
from fastapi.testclient import TestClient

from recommender.corpora import SAMPLE_DIR, load_sample
from recommender.extractors.lexicon import LexiconExtractor
from recommender.formats import brat
from recommender.formats.xmi import PREDICTED, load_cas, load_typesystem_xml
from recommender.retraining import Corpora
from recommender.service import ahead, create_app
from recommender.settings import Settings

SPAN = "webanno.custom.ClinicalEntity"
BUDGET = 2.0


def build_models(root: Path) -> dict[str, Path]:
    """A lexicon and a tiny random LLaMA (one training step) as model folders under ``root``."""
    from test_llama_training import build_tiny_base, head, small_config

    from recommender.extractors.llama.extractor import LlamaExtractor

    sample = load_sample()
    LexiconExtractor.train(brat.read(SAMPLE_DIR)).save(root / "lexicon")
    base = build_tiny_base(root / "base", sample)
    config = small_config(base, max_steps=1, max_new_tokens=6, merge=True)
    LlamaExtractor.train(sample[:2], [head(sample[3], 2)], config, root / "llama")
    return {"lexicon": root / "lexicon", "llama": root / "llama"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("peft")
    return build_models(tmp_path_factory.mktemp("ahead"))


def settings_for(tmp_path: Path, models: dict[str, Path], **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "model": models["lexicon"],
        "model_dir": tmp_path / "reg",
        "retrain": False,
        "serve_models": {"llama": models["llama"]},
        "miss_budget_seconds": BUDGET,
    }
    return Settings(**(values | kw))


@pytest.fixture
def client(tmp_path: Path, models: dict[str, Path]) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(tmp_path, models), corpora=Corpora([], []))) as c:
        yield c


def fixture(fixtures_dir: Path, name: str) -> dict[str, Any]:
    data = json.loads((fixtures_dir / name).read_text(encoding="utf-8"))
    return data.get("body", data) if name.startswith("labelstudio/webhook") else data


def explanations(body: dict[str, Any], request: dict[str, Any]) -> set[str]:
    cas: Cas = load_cas(body["document"], load_typesystem_xml(request["typeSystem"]))
    return {fs.get("label_score_explanation") for fs in cas.select(SPAN) if fs.get(PREDICTED)}


def wait_for(client: TestClient, state: str, n: int = 1, timeout: float = 120) -> dict[str, Any]:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        counts = client.get("/status").json()["precompute"]["llama"]
        if counts[state] >= n:
            return counts
        time.sleep(0.2)
    raise AssertionError(f"no prediction {state} within {timeout} s: {counts}")


def test_a_miss_falls_back_within_the_budget_and_fills_the_cache(
    client: TestClient, fixtures_dir: Path
) -> None:
    service = client.app.state.service
    lexicon, llama = service.predictor.version, service.models["llama"].version
    request = fixture(fixtures_dir, "inception/synthetic/predict_span_request.json")
    started = time.monotonic()
    first = client.post("/inception/llama/entities/predict", json=request)
    elapsed = time.monotonic() - started
    assert first.status_code == 200
    assert elapsed < BUDGET, f"a miss took {elapsed:.2f} s"
    fallback = explanations(first.json(), request)
    assert fallback == {f"kiwi.lexicon.v1 {lexicon} (fallback: {llama} queued)"}
    status = client.get("/status").json()["precompute"]["llama"]
    assert status["version"] == llama and status["queued"] + status["running"] + status["done"] == 1
    wait_for(client, "done")
    second = client.post("/inception/llama/entities/predict", json=request)
    assert second.status_code == 200
    cached = explanations(second.json(), request)
    assert cached <= {f"kiwi.llama.v1 {llama}"}, "answered by the LLaMA from the cache"
    assert fallback.isdisjoint(cached)
    # the main model's URLs are unaffected: the lexicon answers in the request
    main = client.post("/inception/entities/predict", json=request)
    assert explanations(main.json(), request) == {f"kiwi.lexicon.v1 {lexicon}"}
    page = client.get("/").text
    assert "Predictions computed ahead" in page and llama in page


def test_label_studio_gets_the_fallback_then_the_llama_version(
    client: TestClient, fixtures_dir: Path
) -> None:
    service = client.app.state.service
    lexicon, llama = service.predictor.version, service.models["llama"].version
    request = fixture(fixtures_dir, "labelstudio/predict_request_batch.json")
    texts = [t for t in request["tasks"] if (t.get("data") or {}).get("text", "").strip()]
    first = client.post("/labelstudio/llama/predict", json=request)
    assert first.status_code == 200
    versions = {r["model_version"] for r in first.json()["results"] if r["result"] or r["score"] != 1.0}
    assert versions == {f"{lexicon} (fallback for {llama})"}
    wait_for(client, "done", n=len(texts))
    second = client.post("/labelstudio/llama/predict", json=request).json()
    assert len(second["results"]) == len(request["tasks"])
    assert {r["model_version"] for r in second["results"]} == {llama}


def test_tasks_created_queues_the_notes_ahead(client: TestClient, fixtures_dir: Path) -> None:
    webhook = fixture(fixtures_dir, "labelstudio/webhook_TASKS_CREATED.json")
    r = client.post("/webhook", json=webhook)
    assert r.status_code == 200
    n = len([t for t in webhook["tasks"] if t["data"].get("text", "").strip()])
    assert r.json() == {"status": "queued", "new": n} and n > 0
    assert client.post("/webhook", json=webhook).json()["new"] == 0, "queued once"
    wait_for(client, "done", n=n)


def test_the_worker_waits_between_steps_while_requests_run(client: TestClient, fixtures_dir: Path) -> None:
    service = client.app.state.service
    webhook = fixture(fixtures_dir, "labelstudio/webhook_TASKS_CREATED.json")
    n = len([t for t in webhook["tasks"] if t["data"].get("text", "").strip()])
    waiting = threading.Event()
    wait_idle = service.compute.wait_idle

    def recorded(timeout: float) -> bool:
        waiting.set()
        return wait_idle(timeout)

    service.compute.wait_idle = recorded
    forwards: list[float] = []
    model = service.models["llama"].current.engine().model
    hook = model.register_forward_hook(lambda *_: forwards.append(time.monotonic()))
    try:
        with service.compute.lane("annotator"):  # a request's model call holds the cores
            assert client.post("/webhook", json=webhook).json()["new"] == n
            assert waiting.wait(60), "the worker never waited for the request"
            time.sleep(0.5)
            assert forwards == [], "no forward pass while a request's model call runs"
        wait_for(client, "done", n=n, timeout=60)
    finally:
        hook.remove()
    assert forwards, "it generated once the request was done"


@pytest.fixture
def llama_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker yields to a request for at most a few seconds a step, so a tiny LLaMA on a loaded
    machine can finish a note while a test holds the lane: these tests need it to wait throughout."""
    monkeypatch.setattr(ahead, "_MAX_YIELD_SECONDS", 600.0)


@pytest.mark.usefixtures("llama_waits")
def test_imported_notes_get_their_fallback_ahead_too(client: TestClient, fixtures_dir: Path) -> None:
    service = client.app.state.service
    lexicon, llama = service.predictor.version, service.models["llama"].version
    webhook = fixture(fixtures_dir, "labelstudio/webhook_TASKS_CREATED.json")
    tasks = [t for t in webhook["tasks"] if t["data"].get("text", "").strip()]
    request = fixture(fixtures_dir, "labelstudio/predict_request_batch.json") | {"tasks": tasks}
    fallback = service.predictor.current
    with service.compute.lane("annotator"):  # holds the LLaMA at its first step: misses stay misses
        client.post("/webhook", json=webhook)
        until = time.monotonic() + 60
        while client.get("/status").json()["precompute"].get("default", {}).get("done", 0) < len(tasks):
            assert time.monotonic() < until, "the fallback model's predictions were not computed ahead"
            time.sleep(0.1)

        def computed_in_the_request(*_: Any, **__: Any) -> Any:
            raise AssertionError("the fallback was computed in the request")

        fallback.predict = computed_in_the_request
        try:
            answer = client.post("/labelstudio/llama/predict", json=request)
        finally:
            del fallback.predict
        assert answer.status_code == 200
        results = answer.json()["results"]
        assert len(results) == len(tasks) and any(r["result"] for r in results)
        assert {r["model_version"] for r in results} == {f"{lexicon} (fallback for {llama})"}
    wait_for(client, "done", n=len(tasks))


@pytest.mark.usefixtures("llama_waits")
def test_a_fallback_computed_in_a_request_is_cached(client: TestClient, fixtures_dir: Path) -> None:
    service = client.app.state.service
    request = fixture(fixtures_dir, "labelstudio/predict_request_batch.json")
    n = len([t for t in request["tasks"] if (t.get("data") or {}).get("text", "").strip()])
    with service.compute.lane("annotator"):
        first = client.post("/labelstudio/llama/predict", json=request).json()
        until = time.monotonic() + 30  # cached after the answer
        while client.get("/status").json()["precompute"]["default"]["done"] < n:
            assert time.monotonic() < until, "the fallback predictions were not cached"
            time.sleep(0.05)
        fallback = service.predictor.current
        fallback.predict = lambda *_, **__: pytest.fail("computed again")
        try:
            again = client.post("/labelstudio/llama/predict", json=request).json()
        finally:
            del fallback.predict
    assert again["results"] == first["results"]


class BrokenEngine:
    """An engine whose server is down."""

    def generate(self, prompts: Sequence[Any], *, between_steps: Any = None) -> list[Any]:
        raise ConnectionError("refused")


def test_failed_generation_is_retried_then_reported_never_served_empty(
    tmp_path: Path, models: dict[str, Path], fixtures_dir: Path
) -> None:
    settings = settings_for(tmp_path, models, precompute_attempts=2)
    request = fixture(fixtures_dir, "inception/synthetic/predict_span_request.json")
    with TestClient(create_app(settings, corpora=Corpora([], []))) as client:
        service = client.app.state.service
        service.models["llama"].current._engine = BrokenEngine()
        lexicon, llama = service.predictor.version, service.models["llama"].version
        client.post("/inception/llama/entities/predict", json=request)
        counts = wait_for(client, "failed", timeout=30)
        assert counts["done"] == 0 and counts["queued"] == 0
        answer = client.post("/inception/llama/entities/predict", json=request)
        assert explanations(answer.json(), request) == {
            f"kiwi.lexicon.v1 {lexicon} (fallback: {llama} failed)"
        }


def test_the_cache_survives_a_restart(tmp_path: Path, models: dict[str, Path], fixtures_dir: Path) -> None:
    request = fixture(fixtures_dir, "inception/synthetic/predict_span_request.json")
    with TestClient(create_app(settings_for(tmp_path, models), corpora=Corpora([], []))) as client:
        client.post("/inception/llama/entities/predict", json=request)
        wait_for(client, "done")
        before = client.post("/inception/llama/entities/predict", json=request).json()
    # no worker after the restart: an answer from the LLaMA can only come from the database
    settings = settings_for(tmp_path, models, precompute=False)
    with TestClient(create_app(settings, corpora=Corpora([], []))) as client:
        llama = client.app.state.service.models["llama"].version
        after = client.post("/inception/llama/entities/predict", json=request).json()
        assert explanations(after, request) <= {f"kiwi.llama.v1 {llama}"}
        assert after == before


def test_kiwi_precompute_fills_the_cache_the_service_answers_from(
    tmp_path: Path, models: dict[str, Path], fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from support import run_kiwi

    request = fixture(fixtures_dir, "inception/synthetic/predict_span_request.json")
    sofa = load_cas(request["document"]["xmi"], load_typesystem_xml(request["typeSystem"])).sofa_string
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "note1.txt").write_text(sofa, encoding="utf-8")
    settings = settings_for(tmp_path, models, precompute=False)
    monkeypatch.setenv("KIWI_DATABASE_URL", str(settings.database_url))
    args = ["precompute", "--model", str(models["llama"]), "--name", "llama", str(notes)]
    first = run_kiwi(*args)
    assert first.returncode == 0, first.stderr
    assert "1 notes: 1 computed, 0 from the cache" in first.stderr
    again = run_kiwi(*args)
    assert again.returncode == 0 and "0 computed, 1 from the cache" in again.stderr, "resumes"
    with TestClient(create_app(settings, corpora=Corpora([], []))) as client:  # no worker runs
        llama = client.app.state.service.models["llama"].version
        assert client.get("/status").json()["precompute"]["llama"]["done"] == 1
        answer = client.post("/inception/llama/entities/predict", json=request)
        assert answer.status_code == 200
        assert explanations(answer.json(), request) <= {f"kiwi.llama.v1 {llama}"}
        assert client.get("/status").json()["precompute"]["llama"]["queued"] == 0, "a hit queues nothing"


def test_retraining_with_the_llama_trainer_promotes_a_new_adapter_from_corrections(
    tmp_path: Path, models: dict[str, Path], fixtures_dir: Path
) -> None:
    from test_llama_training import head

    from recommender.extractors.base import ModelInfo
    from recommender.model_versions import ModelVersions

    model_versions = ModelVersions(tmp_path / "reg")
    v1 = model_versions.add(models["llama"])
    model_versions.promote(v1)
    settings = Settings(
        model_dir=tmp_path / "reg",
        serve_models={"lexicon": models["lexicon"]},
        fallback_model="lexicon",
        trainer="kiwi.llama.v1",
        trainer_config={
            "max_steps": 1,
            "batch_size": 2,
            "grad_accum": 1,
            "max_examples": 4,
            "max_new_tokens": 6,
        },
        retrain_debounce_seconds=0,
        heldout_fraction=0,
        promotion_margin=1.0,  # a random model's F1 is noise: the gate runs, this test is about the loop
    )
    dev = [head(load_sample()[3], 2)]
    request = fixture(fixtures_dir, "inception/synthetic/predict_span_request.json")
    with TestClient(create_app(settings, corpora=Corpora(seed=[], dev=dev))) as client:
        service = client.app.state.service
        assert service.predictor.version == v1
        client.post("/inception/entities/predict", json=request)
        wait_for_model(client, "default", v1)
        train = fixture(fixtures_dir, "inception/synthetic/train_request.json")
        assert client.post("/inception/entities/train", json=train).status_code == 204
        job = wait_job(client)
        assert job["outcome"] == "promoted", job
        v2 = job["candidate"]
        assert v2 != v1 and model_versions.current_version() == v2
        assert service.predictor.version == v2, "the promoted adapter serves"
        info = ModelInfo.load(model_versions.path(v2))
        assert info.extractor == "kiwi.llama.v1"
        assert info.config["init_from"] == str(model_versions.path(v1)), "continued from the promoted adapter"
        # the cache is by model version: v1's prediction is not served for v2, and the note is queued
        answer = client.post("/inception/entities/predict", json=request).json()
        assert f"kiwi.llama.v1 {v1}" not in explanations(answer, request)
        wait_for_model(client, "default", v2)
        answer = client.post("/inception/entities/predict", json=request).json()
        assert explanations(answer, request) <= {f"kiwi.llama.v1 {v2}"}


def wait_for_model(client: TestClient, name: str, version: str, timeout: float = 120) -> None:
    """Until the note queued for ``version`` of served model ``name`` is done."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        counts = client.get("/status").json()["precompute"][name]
        if counts["version"] == version and counts["done"] >= 1:
            return
        time.sleep(0.2)
    raise AssertionError(f"no prediction of {version} done within {timeout} s")


def wait_job(client: TestClient, timeout: float = 300) -> dict[str, Any]:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        finished = client.get("/jobs").json()["finished"]
        if finished:
            return finished[-1]
        time.sleep(0.5)
    raise AssertionError(f"no training job finished within {timeout} s")
