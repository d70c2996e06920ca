"""A real Label Studio (PyPI ``label-studio`` in its own venv) against this backend under uvicorn.

Creates a project with the generated labeling config, connects the backend, imports notes, retrieves
predictions, submits a correction that teaches a new word, starts training and sees predictions of a
newer model version, with the project's model version pinned for uncertainty sampling. The venv is
made by ``scripts/setup_external.sh`` (``make test``); without it the test skips (fails in CI).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from lsserver import LS_TOKEN, wait_for

from recommender.corpora import SAMPLE_DIR
from recommender.extractors.lexicon import LexiconExtractor
from recommender.formats import brat
from recommender.guidelines import labelstudio_config
from recommender.model_versions import ModelVersions
from recommender.retraining import Corpora
from recommender.service import create_app
from recommender.service.app import running_server
from recommender.settings import Settings
from recommender.store.suggestions import text_hash

pytestmark = pytest.mark.external

NEW_WORD = "zorblatitis"


def predictions(ls: httpx.Client, project: int) -> list[dict[str, Any]]:
    r = ls.get("/api/predictions/", params={"project": project})
    r.raise_for_status()
    data = r.json()
    return data if isinstance(data, list) else data.get("results", [])


def retrieve_predictions(ls: httpx.Client, project: int) -> list[dict[str, Any]]:
    """Label Studio's "Retrieve predictions" action over every task of a project, then its predictions."""
    r = ls.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    assert r.status_code == 200, r.text
    return predictions(ls, project)


def labelled(prediction: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (x["value"]["text"], x["value"]["labels"][0]) for x in prediction["result"] if x["type"] == "labels"
    }


def test_label_studio_end_to_end(label_studio: httpx.Client, tmp_path: Path) -> None:
    ls = label_studio
    sample = brat.read(SAMPLE_DIR)
    model_versions = ModelVersions(tmp_path / "models")
    LexiconExtractor.train(sample).save(tmp_path / "first")
    v1 = model_versions.add(tmp_path / "first")
    model_versions.promote(v1)
    settings = Settings(
        model_dir=tmp_path / "models",
        port=0,
        trainer="kiwi.lexicon.v1",
        retrain_debounce_seconds=0,
        heldout_fraction=0,
        label_studio_url=str(ls.base_url),
        label_studio_token=LS_TOKEN,
    )
    app = create_app(settings, corpora=Corpora(seed=sample, dev=[]))
    with running_server(app, settings) as backend:
        project = ls.post(
            "/api/projects/",
            json={
                "title": "kiwi e2e",
                "label_config": labelstudio_config(),
                "sampling": "Uncertainty sampling",
            },
        )
        assert project.status_code == 201, project.text
        pid = project.json()["id"]
        ml = ls.post("/api/ml/", json={"url": backend, "project": pid, "title": "kiwi"})
        assert ml.status_code == 201, ml.text
        notes = [
            sample[0].text,
            f"Patient reports {NEW_WORD} and denies chest pain. Started aspirin 81 mg daily.",
            f"Follow-up for {NEW_WORD}. No fever.",
        ]
        r = ls.post(f"/api/projects/{pid}/import", json=[{"text": t} for t in notes])
        assert r.status_code == 201, r.text

        first = retrieve_predictions(ls, pid)
        assert len(first) == 3 and {p["model_version"] for p in first} == {v1}
        assert all(0 <= p["score"] <= 1 for p in first)
        assert any(("aspirin", "drug") in labelled(p) for p in first)
        assert not any(NEW_WORD in text for p in first for text, _ in labelled(p))
        wait_for(lambda: ls.get(f"/api/projects/{pid}").json()["model_version"] == v1, "the pin to v1", 20)

        # The annotator corrects the second note: the new word is a problem.
        tasks = ls.get("/api/tasks/", params={"project": pid}).json()
        tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
        task = next(t for t in tasks if t["data"]["text"] == notes[1])
        text = notes[1]
        begin = text.index(NEW_WORD)
        pred = next(p for p in first if p["task"] == task["id"])
        region = {
            "id": "new1",
            "from_name": "label",
            "to_name": "text",
            "type": "labels",
            "value": {"start": begin, "end": begin + len(NEW_WORD), "text": NEW_WORD, "labels": ["problem"]},
        }
        r = ls.post(f"/api/tasks/{task['id']}/annotations/", json={"result": [*pred["result"], region]})
        assert r.status_code == 201, r.text
        service = app.state.service
        wait_for(lambda: service.store.latest(f"labelstudio-{pid}"), "the ANNOTATION_CREATED webhook", 20)

        # What the correction says about v1: every suggestion of the note kept, the new word missed.
        service.evidence.flush()
        evidence = httpx.get(f"{backend}/status").json()["page"]["evidence"]
        suggested = sum(r["type"] == "labels" for r in pred["result"])
        assert list(evidence) == [v1] and evidence[v1]["notes"] == 1
        assert evidence[v1]["outcomes"] == {
            "accepted": suggested, "relabelled": 0, "rebounded": 0, "relabelled_rebounded": 0, "deleted": 0,
            "missed": 1,
        }  # fmt: skip
        assert evidence[v1]["acceptance"]["rate"] == 1.0 and evidence[v1]["edits_per_note"]["mean"] == 1.0
        page = httpx.get(f"{backend}/").text
        assert "What the annotators' corrections say" in page and f"<code>{v1}</code>" in page

        r = ls.post(f"/api/ml/{ml.json()['id']}/train", json={"use_ground_truth": False})
        assert r.status_code == 200, r.text
        v2 = wait_for(
            lambda: (v := model_versions.current_version()) != v1 and v, "a promoted retrained model", 90
        )
        wait_for(lambda: service.predictor.version == v2, "the service to serve v2", 20)

        second = [p for p in retrieve_predictions(ls, pid) if p["model_version"] == v2]
        assert len(second) == 3
        unseen = next(t["id"] for t in tasks if t["data"]["text"] == notes[2])
        assert (NEW_WORD, "problem") in labelled(next(p for p in second if p["task"] == unseen))
        wait_for(lambda: ls.get(f"/api/projects/{pid}").json()["model_version"] == v2, "the pin to v2", 20)


def test_a_llama_beside_the_lexicon_answers_from_the_cache_and_precompute_pushes(
    label_studio: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Label Studio connected to ``/labelstudio/llama``: the first retrieval gets the lexicon's
    predictions marked as fallbacks, the imported notes are computed in the background, the next
    retrieval gets the LLaMA's own version; ``kiwi precompute --label-studio`` pushes a prediction to
    every task from the cache and resumes where it was."""
    pytest.importorskip("peft")
    from support import run_kiwi
    from test_service_ahead import build_models

    ls = label_studio
    models = build_models(tmp_path / "built")
    settings = Settings(
        model=models["lexicon"],
        model_dir=tmp_path / "models",
        serve_models={"llama": models["llama"]},
        port=0,
        retrain=False,
        precompute=False,  # started by hand below: on an idle machine the worker beats the first retrieval
        label_studio_url=str(ls.base_url),
        label_studio_token=LS_TOKEN,
    )
    app = create_app(settings, corpora=Corpora(seed=[], dev=[]))
    service = app.state.service
    lexicon, llama = service.predictor.version, service.models["llama"].version
    with running_server(app, settings) as backend:
        pid = ls.post(
            "/api/projects/", json={"title": "kiwi llama", "label_config": labelstudio_config()}
        ).json()["id"]
        ml = ls.post(
            "/api/ml/", json={"url": f"{backend}/labelstudio/llama", "project": pid, "title": "llama"}
        )
        assert ml.status_code == 201, ml.text
        notes = ["Denies chest pain. Started aspirin 81 mg daily.", "No fever or chills."]
        r = ls.post(f"/api/projects/{pid}/import", json=[{"text": t} for t in notes])
        assert r.status_code == 201, r.text
        first = retrieve_predictions(ls, pid)
        assert {p["model_version"] for p in first} == {f"{lexicon} (fallback for {llama})"}
        assert any(labelled(p) for p in first), "the fallback is the lexicon's prediction, not an empty one"
        service.ahead.start()
        wait_for(lambda: service.ahead.status()["llama"]["done"] >= len(notes), "the LLaMA predictions", 120)
        own = [p for p in retrieve_predictions(ls, pid) if p["model_version"] == llama]
        assert len(own) == len(notes), "every task got the LLaMA's own prediction from the cache"

        monkeypatch.setenv("KIWI_DATABASE_URL", str(settings.database_url))
        monkeypatch.setenv("KIWI_MODEL_DIR", str(tmp_path / "models"))
        monkeypatch.setenv("KIWI_LABEL_STUDIO_URL", str(ls.base_url))
        monkeypatch.setenv("KIWI_LABEL_STUDIO_TOKEN", LS_TOKEN)
        args = ["precompute", "--model", str(models["llama"]), "--name", "llama", "--label-studio", str(pid)]
        pushed = run_kiwi(*args)
        assert pushed.returncode == 0, pushed.stderr
        assert "0 computed, 2 from the cache" in pushed.stderr
        assert len([p for p in predictions(ls, pid) if p["model_version"] == llama]) == 2 * len(notes)
        position = tmp_path / "models" / "precompute" / f"labelstudio-{pid}.json"
        assert json.loads(position.read_text())["model_version"] == llama
        logged = service.evidence.log.latest  # the pushed predictions are what the annotators will see
        listed = ls.get("/api/tasks/", params={"project": pid}).json()
        for task in listed["tasks"] if isinstance(listed, dict) else listed:
            [latest] = logged(
                f"labelstudio-{pid}", f"task-{task['id']}", text_hash(task["data"]["text"])
            ).values()
            assert latest.model_version == llama
        again = run_kiwi(*args)
        assert again.returncode == 0, again.stderr
        assert "2 done before" in again.stderr and "0 to go" in again.stderr, "resumed from the position"
        assert len([p for p in predictions(ls, pid) if p["model_version"] == llama]) == 2 * len(notes)


def test_a_backend_behind_basic_auth_gives_its_webhook_the_credentials(
    label_studio: httpx.Client, tmp_path: Path
) -> None:
    """Label Studio creates the backend's webhook without credentials; the first ``/predict`` adds
    them (through the SDK), so the next ANNOTATION_CREATED passes the backend's basic auth."""
    ls = label_studio
    sample = brat.read(SAMPLE_DIR)
    LexiconExtractor.train(sample).save(tmp_path / "lexicon")
    password = "kiwi-e2e-basic-pass"
    settings = Settings(
        model=tmp_path / "lexicon",
        model_dir=tmp_path / "models",
        port=0,
        retrain=False,
        basic_auth_user="kiwi",
        basic_auth_password=password,
        label_studio_url=str(ls.base_url),
        label_studio_token=LS_TOKEN,
    )
    app = create_app(settings, corpora=Corpora(seed=[], dev=[]))
    with running_server(app, settings) as backend:
        pid = ls.post(
            "/api/projects/", json={"title": "kiwi basic auth", "label_config": labelstudio_config()}
        ).json()["id"]
        ml = ls.post(
            "/api/ml/",
            json={
                "url": backend,
                "project": pid,
                "title": "kiwi",
                "auth_method": "BASIC_AUTH",
                "basic_auth_user": "kiwi",
                "basic_auth_pass": password,
            },
        )
        assert ml.status_code == 201, ml.text
        r = ls.post(f"/api/projects/{pid}/import", json=[{"text": "Denies chest pain. Started aspirin."}])
        assert r.status_code == 201, r.text
        [prediction] = retrieve_predictions(ls, pid)

        def our_hooks() -> list[dict[str, Any]]:
            hooks = ls.get("/api/webhooks/", params={"project": pid}).json()
            return [h for h in hooks if h["url"].rstrip("/") == f"{backend}/webhook"]

        assert our_hooks(), "Label Studio made a webhook for the backend"
        wait_for(
            lambda: all(
                (h.get("headers") or {}).get("Authorization", "").startswith("Basic ") for h in our_hooks()
            ),
            "the webhook's credentials",
            20,
        )
        tasks = ls.get("/api/tasks/", params={"project": pid}).json()
        [task] = tasks["tasks"] if isinstance(tasks, dict) else tasks
        r = ls.post(f"/api/tasks/{task['id']}/annotations/", json={"result": prediction["result"]})
        assert r.status_code == 201, r.text
        service = app.state.service
        wait_for(lambda: service.store.latest(f"labelstudio-{pid}"), "the authorized ANNOTATION_CREATED", 20)
