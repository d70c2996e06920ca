"""The status page (``GET /``): what it shows equals ``GET /status``, same auth, renders in Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import chromium, chromium_screenshot

from recommender.corpora import development_split
from recommender.formats import brat
from recommender.model_versions import ModelVersions
from recommender.retraining import Corpora, bootstrap, get_trainer
from recommender.service.app import create_app, running_server
from recommender.settings import Settings
from recommender.store.suggestions import NewSuggestion
from recommender.synthetic import generate


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Two promoted lexicon models (a learning curve of two points), each with measured dev scores."""
    settings = Settings(
        model_dir=tmp_path / "models", trainer="kiwi.lexicon.v1", retrain_debounce_seconds=0, seed_fetch=False
    )
    model_versions = ModelVersions(settings.model_dir)
    for n, seed in ((24, 1), (60, 2)):
        brat.write(generate(n, seed=seed), tmp_path / f"seed{n}")
        bootstrap(
            settings.model_copy(update={"seed_corpus": tmp_path / f"seed{n}"}), model_versions, say=print
        )
    return settings


def _app_with_history(settings: Settings) -> TestClient:
    train, dev = development_split(generate(40, seed=5))
    client = TestClient(
        create_app(settings, corpora=Corpora(train, dev), trainer=get_trainer("kiwi.lexicon.v1"))
    )
    service = client.app.state.service  # type: ignore[attr-defined]
    store = service.store
    model = service.predictor.current
    notes = generate(6, seed=7)
    # The served model pre-annotated the notes (the suggestion log), then two annotators corrected them.
    shown = model.predict([d.without_annotations() for d in notes])
    service.evidence.record(
        [
            NewSuggestion("default", model.version, "test", "all", "ward-7", d.id, p)
            for d, p in zip(notes, shown, strict=True)
        ]
    )
    for annotator in ("alice", "bob"):
        for doc in notes:
            service.evidence.score("ward-7", doc.id, store.add("ward-7", doc.id, annotator, "test", doc))
    service.evidence.flush()
    store.add("clinic", "n1", "carol", "test", generate(1, seed=8)[0])
    return client


def _text(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def test_page_shows_the_figures_of_status(settings: Settings) -> None:
    with _app_with_history(settings) as client:
        job = client.post("/jobs", params={"project": "ward-7"}).json()
        client.app.state.service.retrainer.wait(client.app.state.service.retrainer.job(job["id"]), 60)  # type: ignore[attr-defined]
        status = client.get("/status").json()
        page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = _text(page.text)
    view = status["page"]
    served = view["served"]
    assert served["version"] == status["model"]["version"] and served["version"] in text
    assert served["data_fingerprint"] in text
    for task in ("ner", "re", "spans"):
        score = served["dev"][task]
        assert f"{score['f1']:.3f} ({score['ci'][0]:.3f}-{score['ci'][1]:.3f})" in text
    assert f"exact F1 on {served['dev']['notes']} development notes" in text
    (finished,) = status["retraining"]["finished"]
    promoted = finished["outcome"] == "promoted"
    assert len(view["learning_curve"]) == 2 + promoted  # two bootstraps (and the job's promotion)
    for point in view["learning_curve"]:
        assert point["version"] in text and f"{point['dev']['ner']['f1']:.3f}" in text
    assert page.text.count("<circle") == 2 * len(view["learning_curve"])
    # From the real corrections: the bootstrapped models have none, the job's model its held-out ones.
    assert [p["corrected"] for p in view["learning_curve"][:2]] == [None, None]
    if promoted:
        corrected = view["learning_curve"][-1]["corrected"]
        assert corrected["notes"] == finished["metrics"]["heldout_notes"] > 0
        assert f"{corrected['ner']['f1']:.3f}" in text and page.text.count("<rect") == 2
    assert f"{finished['id']} ward-7 finished" in text and finished["metrics"]["reason"] in text
    assert view["corrections"] == {"clinic": {next(iter(view["corrections"]["clinic"])): 1}, "ward-7": {
        next(iter(view["corrections"]["ward-7"])): 12}}  # fmt: skip
    assert "ward-7 12" in text and "clinic 1" in text
    assert 'href="/projects/ward-7/agreement?format=html"' in page.text.replace("'", '"')
    for name, rec in view["recommenders"].items():
        assert f"{name} {rec['task']} {rec['layer']} {served['version']}" in text
    # What the corrections say about the model that pre-annotated ward-7's notes, beside its dev score.
    (first_version,) = view["evidence"]
    evidence = view["evidence"][first_version]
    assert first_version == view["learning_curve"][1]["version"] and evidence["notes"] == 12
    accepted = evidence["acceptance"]
    assert 0 < accepted["rate"] < 1 and f"{accepted['rate']:.3f} ({accepted['ci'][0]:.3f}-" in text
    spans = evidence["f1"]["spans"]["exact"]
    assert f"{spans['f1']:.3f} ({spans['ci'][0]:.3f}-{spans['ci'][1]:.3f})" in text
    assert f"{evidence['edits_per_note']['mean']:.3f}" in text
    assert evidence["dev"] == view["learning_curve"][1]["dev"]
    assert page.text.count("<polygon") == 2 * len(evidence["days"])  # acceptance and F1 per day


def test_page_needs_the_same_auth(settings: Settings) -> None:
    secured = Settings(**(settings.model_dump() | {"auth_token": "s3cret-status-page-token"}))
    with TestClient(
        create_app(secured, corpora=Corpora([], []), trainer=get_trainer("kiwi.lexicon.v1"))
    ) as client:
        assert client.get("/").status_code == 401
        assert (
            client.get("/", headers={"Authorization": "Bearer s3cret-status-page-token"}).status_code == 200
        )


def test_page_before_any_model(tmp_path: Path) -> None:
    bare = Settings(model_dir=tmp_path / "m", retrain=False)
    with TestClient(create_app(bare, corpora=Corpora([], []))) as client:
        text = _text(client.get("/").text)
    assert "No model is served yet" in text and "No corrections stored yet" in text


@pytest.fixture
def live(settings: Settings) -> Iterator[str]:
    with _app_with_history(settings) as client:
        app = client.app
        with running_server(app, settings.model_copy(update={"port": 0})) as base:  # type: ignore[arg-type]
            yield base


@pytest.mark.external
def test_page_renders_in_headless_chromium(live: str, tmp_path: Path) -> None:
    browser = chromium()
    PIL = pytest.importorskip("PIL.Image", reason="Pillow is needed to read the screenshot")
    shot = tmp_path / "status.png"
    run = chromium_screenshot(browser, f"{live}/", shot, tmp_path / "profile", (1280, 2000))
    assert shot.is_file(), "chromium wrote no screenshot"
    assert "CONSOLE" not in run.stderr, run.stderr  # no console messages, errors included
    pixels = np.asarray(PIL.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    coloured = (np.abs(pixels.astype(int) - pixels.mean(axis=2, keepdims=True)) > 30).any(axis=2)
    assert (pixels < 240).any(axis=2).mean() > 0.02  # text and tables rendered
    assert coloured.sum() > 3600  # the learning curve and the correction bars rendered (pixels)
