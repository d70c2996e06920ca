"""Several models on one service (``KIWI_SERVE_MODELS``): each answers INCEpTION at
``/inception/{model}/{recommender}`` and Label Studio at ``/labelstudio/{model}`` with its own model
version, and the main model's URLs work as before."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cassis import Cas
from fastapi.testclient import TestClient

from recommender.corpora import SAMPLE_DIR
from recommender.document import Document
from recommender.errors import ConfigError
from recommender.extractors.lexicon import LexiconExtractor
from recommender.formats import brat
from recommender.formats.xmi import PREDICTED, load_cas, load_typesystem_xml
from recommender.retraining import Corpora
from recommender.service import create_app
from recommender.settings import Settings, load_settings

SPAN = "webanno.custom.ClinicalEntity"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, mtsamples_docs: list[Document]) -> dict[str, Path]:
    """Two lexicons that differ: the sample notes alone, and the sample plus MTSamples notes."""
    root = tmp_path_factory.mktemp("models")
    LexiconExtractor.train(brat.read(SAMPLE_DIR)).save(root / "small")
    LexiconExtractor.train(brat.read(SAMPLE_DIR) + mtsamples_docs[:10]).save(root / "large")
    return {"small": root / "small", "large": root / "large"}


@pytest.fixture
def client(tmp_path: Path, models: dict[str, Path]) -> Iterator[TestClient]:
    settings = Settings(
        model=models["small"],
        model_dir=tmp_path / "reg",
        retrain=False,
        serve_models={"large": models["large"]},
    )
    with TestClient(create_app(settings, corpora=Corpora([], []))) as c:
        yield c


def fixture(fixtures_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((fixtures_dir / name).read_text(encoding="utf-8"))


def suggestions(body: dict[str, Any], request: dict[str, Any]) -> tuple[set[tuple[str, int, int]], set[str]]:
    cas: Cas = load_cas(body["document"], load_typesystem_xml(request["typeSystem"]))
    found = [fs for fs in cas.select(SPAN) if fs.get(PREDICTED)]
    return {(fs.get("label"), fs.begin, fs.end) for fs in found}, {
        fs.get("label_score_explanation") for fs in found
    }


def test_each_model_answers_inception_with_its_own_version(client: TestClient, fixtures_dir: Path) -> None:
    service = client.app.state.service
    small, large = service.predictor.version, service.models["large"].version
    assert small != large
    request = fixture(fixtures_dir, "inception/synthetic/predict_span_request.json")
    answers = {
        path: client.post(path, json=request)
        for path in (
            "/inception/entities/predict",
            "/inception/default/entities/predict",
            "/inception/large/entities/predict",
        )
    }
    assert {r.status_code for r in answers.values()} == {200}
    spans = {path: suggestions(r.json(), request) for path, r in answers.items()}
    assert spans["/inception/entities/predict"] == spans["/inception/default/entities/predict"]
    main_spans, main_explanations = spans["/inception/entities/predict"]
    large_spans, large_explanations = spans["/inception/large/entities/predict"]
    assert main_spans and large_spans
    assert main_explanations == {f"kiwi.lexicon.v1 {small}"}
    assert large_explanations == {f"kiwi.lexicon.v1 {large}"}, "the explanation names the model that answered"
    r = client.post("/inception/nope/entities/predict", json=request)
    assert r.status_code == 404 and "[nope]" in r.json()["detail"] and "default, large" in r.json()["detail"]


def test_relations_and_train_under_a_model_path(client: TestClient, fixtures_dir: Path) -> None:
    request = fixture(fixtures_dir, "inception/synthetic/predict_relation_request.json")
    r = client.post("/inception/large/relations/predict", json=request)
    assert r.status_code == 200 and f'{PREDICTED}="true"' in r.json()["document"]
    train = fixture(fixtures_dir, "inception/synthetic/train_request.json")
    assert client.post("/inception/large/entities/train", json=train).status_code == 204
    stored = client.app.state.service.store.latest("inception-1")
    assert len(stored) == len(train["documents"]), "corrections are stored whichever model's URL got them"


def test_each_model_has_a_label_studio_url(client: TestClient, fixtures_dir: Path) -> None:
    service = client.app.state.service
    small, large = service.predictor.version, service.models["large"].version
    request = fixture(fixtures_dir, "labelstudio/predict_request_batch.json")
    for base, version in (("", small), ("/labelstudio/default", small), ("/labelstudio/large", large)):
        assert client.get(f"{base}/health").json()["model_version"] == version
        assert client.post(f"{base}/setup", json={}).json()["model_version"] == version
        results = client.post(f"{base}/predict", json=request).json()["results"]
        assert len(results) == len(request["tasks"])
        assert {p["model_version"] for p in results} == {version}
        assert any(x["type"] == "labels" for x in results[0]["result"]), base
        assert client.get(f"{base}/versions").json()["versions"][0] == version
    assert client.get("/labelstudio/nope/health").status_code == 404
    status = client.get("/status").json()["models"]
    assert status["large"]["version"] == large and status["large"]["labelstudio"] == "/labelstudio/large"
    assert status["large"]["inception"] == ["/inception/large/entities", "/inception/large/relations"]
    assert status["default"]["version"] == small


def test_served_model_names_are_checked(tmp_path: Path) -> None:
    for bad in ("default", "Has Space", "../x", ""):
        with pytest.raises(ConfigError, match="served model name"):
            load_settings(model_dir=tmp_path, serve_models={bad: tmp_path})


def test_kiwi_serve_also_takes_name_equals_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recommender.cli import app as cli

    runner = CliRunner()
    bad = runner.invoke(cli, ["serve", "--model-dir", str(tmp_path), "--also", "llama"])
    assert isinstance(bad.exception, ConfigError)
    assert "--also takes NAME=DIR, got [llama]" in str(bad.exception)
    bad = runner.invoke(cli, ["serve", "--model-dir", str(tmp_path), "--also", "Big Model=x"])
    assert isinstance(bad.exception, ConfigError) and "served model name [Big Model]" in str(bad.exception)


def test_kiwi_models_list_shows_the_models_served_beside(tmp_path: Path, models: dict[str, Path]) -> None:
    from typer.testing import CliRunner

    from recommender.cli import app as cli
    from recommender.cli.models_admin import _served_beside
    from recommender.extractors.base import ModelInfo

    env = {"KIWI_SERVE_MODELS": json.dumps({"large": str(models["large"])})}
    out = CliRunner().invoke(cli, ["models", "list", "--model-dir", str(tmp_path)], env=env)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KIWI_SERVE_MODELS", env["KIWI_SERVE_MODELS"])
        rows = _served_beside()
    assert out.exit_code == 0, out.output
    assert "served beside" in out.output and "large" in out.output  # the table as the terminal fits it
    info = ModelInfo.load(models["large"])
    assert rows == [("large", str(models["large"]), info.version, "kiwi.lexicon.v1")]
