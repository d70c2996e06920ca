"""Past one process: PostgreSQL, two API replicas and a trainer on loopback, as separate processes.

Corrections posted to replica A become the model replica B serves; a trainer killed with SIGKILL in
the middle of a job leaves the job to a restarted trainer, which finishes it with every correction.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from recommender.corpora import load_sample
from recommender.document import Document
from recommender.formats import labelstudio, write_documents
from recommender.model_versions import ModelVersions
from recommender.retraining import bootstrap
from recommender.settings import Settings
from recommender.store import CorrectionStore

KIWI = [sys.executable, "-c", "from recommender.cli import main; main()", "serve"]

# A trainer whose first job hangs in training (so the test can kill it there); the job library and
# everything else are the real ones.
STUCK_TRAINER = textwrap.dedent(
    """
    import time
    from recommender.model_versions import ModelVersions
    from recommender.retraining.queue import JobQueue
    from recommender.settings import load_settings
    from recommender.store import CorrectionStore

    def stuck(train, dev, out, init, **kw):
        print("training", len(train), flush=True)
        time.sleep(600)

    settings = load_settings()
    store = CorrectionStore(settings.database_url)
    JobQueue(settings, store, ModelVersions(settings.model_dir), trainer=stuck).run_worker()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _webhook(doc: Document, task_id: int) -> dict[str, Any]:
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 7},
        "task": {"id": task_id, "data": {"text": doc.text}},
        "annotation": {"id": task_id, "completed_by": 1, "result": labelstudio.document_results(doc)},
    }


@pytest.fixture
def cluster(postgres, tmp_path: Path) -> Iterator[dict[str, Any]]:
    sample = load_sample()
    write_documents(sample[:2], tmp_path / "seed", "brat")
    write_documents(sample[2:3], tmp_path / "dev", "brat")
    env = {
        **os.environ,
        "KIWI_DATABASE_URL": postgres.new_database(),
        "KIWI_MODEL_DIR": str(tmp_path / "models"),
        "KIWI_TRAINER": "kiwi.lexicon.v1",
        "KIWI_SEED_CORPUS": str(tmp_path / "seed"),
        "KIWI_DEV_CORPUS": str(tmp_path / "dev"),
        "KIWI_RETRAIN_EVERY": "2",
        "KIWI_RETRAIN_DEBOUNCE_SECONDS": "0.5",
        "KIWI_PROMOTION_MARGIN": "1.0",  # this test is about the plumbing; the gate has its own tests
        "KIWI_JOB_HEARTBEAT_SECONDS": "0.5",
        "KIWI_JOB_STALLED_SECONDS": "3",
        "KIWI_REGISTRY_POLL_SECONDS": "0.5",
    }
    settings = Settings(
        model_dir=tmp_path / "models",
        trainer="kiwi.lexicon.v1",
        seed_corpus=tmp_path / "seed",
        dev_corpus=tmp_path / "dev",
    )
    first = bootstrap(settings, ModelVersions(settings.model_dir)).name
    procs: dict[str, subprocess.Popen[str]] = {}
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name: str, cmd: list[str]) -> subprocess.Popen[str]:
        out = open(logs / f"{name}.log", "a")  # noqa: SIM115 - closed with the process below
        procs[name] = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        return procs[name]

    ports = {"a": _free_port(), "b": _free_port()}
    for name, port in ports.items():
        start(name, [*KIWI, "--role", "api", "--port", str(port)])
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    for url in urls.values():
        _wait(f"{url}/health", lambda url=url: httpx.get(f"{url}/health").status_code == 200, 60)
    yield {
        "env": env,
        "urls": urls,
        "start": start,
        "procs": procs,
        "first": first,
        "logs": logs,
        "sample": sample,
    }
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _serving(url: str) -> str | None:
    return httpx.get(f"{url}/models").json()["serving"]


def _jobs(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/jobs").json()


def test_corrections_to_one_replica_are_served_by_the_other_and_survive_a_killed_trainer(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    a, b = cluster["urls"]["a"], cluster["urls"]["b"]
    sample: list[Document] = cluster["sample"]
    corrections = [sample[1 + i % 3] for i in range(5)]  # 5 annotations (ids differ), 3 notes
    assert _serving(a) == _serving(b) == cluster["first"]
    cluster["start"]("trainer", [*KIWI, "--role", "trainer"])

    # Two corrections to A queue a job (counted from the store); the trainer runs it.
    for i, doc in enumerate(corrections[:2], 1):
        r = httpx.post(f"{a}/webhook", json=_webhook(doc, i))
        assert r.status_code == 200 and r.json()["new"] == 1, r.text
    job = _wait("a finished job", lambda: _jobs(b)["finished"], 60)[-1]
    assert (job["state"], job["outcome"]) == ("finished", "promoted"), job
    promoted = job["candidate"]
    t0 = time.monotonic()
    _wait("replica B to serve the promoted model", lambda: _serving(b) == promoted, 10)
    assert time.monotonic() - t0 < 3  # polled every 0.5 s here (KIWI_REGISTRY_POLL_SECONDS)
    r = httpx.post(f"{b}/predict", json={"tasks": [{"id": 1, "data": {"text": sample[0].text}}]})
    assert r.status_code == 200 and r.json()["results"][0]["model_version"] == promoted, r.text
    assert httpx.get(f"{a}/jobs/{job['id']}").json() == httpx.get(f"{b}/jobs/{job['id']}").json()

    # A trainer dies in the middle of the next job: a restarted one finishes it, nothing is lost.
    cluster["procs"]["trainer"].terminate()
    cluster["procs"]["trainer"].wait(30)
    (tmp_path / "stuck.py").write_text(STUCK_TRAINER)
    stuck = cluster["start"]("stuck", [sys.executable, str(tmp_path / "stuck.py")])
    for i, doc in enumerate(corrections[2:4], 3):
        assert httpx.post(f"{b}/webhook", json=_webhook(doc, i)).json()["new"] == 1
    running = _wait("the job to run on the stuck trainer", lambda: _jobs(a)["running"], 60)[0]
    time.sleep(0.5)
    stuck.send_signal(signal.SIGKILL)
    stuck.wait(30)
    # Corrections keep coming while no trainer is alive.
    assert httpx.post(f"{a}/webhook", json=_webhook(corrections[4], 5)).json()["new"] == 1
    cluster["start"]("trainer2", [*KIWI, "--role", "trainer"])
    done = _wait(
        "the restarted trainer to finish the job",
        lambda: (j := httpx.get(f"{b}/jobs/{running['id']}").json())["state"] == "finished" and j,
        90,
    )
    assert done["outcome"] == "promoted" and done["attempts"] == 2, done
    _wait("replica A to serve the new model", lambda: _serving(a) == done["candidate"], 10)
    store = CorrectionStore(cluster["env"]["KIWI_DATABASE_URL"])
    assert len(store.latest("labelstudio-7")) == 5 and store.check() == []
    store.close()


def test_a_database_outage_is_503_for_corrections_while_predictions_go_on(
    cluster: dict[str, Any], postgres
) -> None:
    """PostgreSQL stopped for a few seconds under traffic: corrections get a clear 503, predictions are
    served throughout, the replicas recover by themselves, and no acknowledged correction is lost."""
    a, b = cluster["urls"]["a"], cluster["urls"]["b"]
    sample: list[Document] = cluster["sample"]
    text = {"tasks": [{"id": 1, "data": {"text": sample[0].text}}]}
    acknowledged: list[int] = []
    refused: list[str] = []
    predictions: dict[int, int] = {}

    def correct(task_id: int, url: str) -> int:
        r = httpx.post(f"{url}/webhook", json=_webhook(sample[task_id % 4], task_id), timeout=30)
        if r.status_code == 200:
            acknowledged.append(task_id)
        elif r.status_code == 503:
            refused.append(r.json()["detail"])
        return r.status_code

    def predict(url: str) -> None:
        status = httpx.post(f"{url}/predict", json=text, timeout=30).status_code
        predictions[status] = predictions.get(status, 0) + 1

    task_id = 100
    for url in (a, b):
        task_id += 1
        assert correct(task_id, url) == 200
    postgres.stop()
    try:
        down_until = time.monotonic() + 4
        while time.monotonic() < down_until:
            for url in (a, b):
                task_id += 1
                assert correct(task_id, url) == 503
                predict(url)
    finally:
        postgres.start()
    assert predictions == {200: predictions.get(200, 0)} and predictions[200] >= 2, predictions
    assert refused and all("database is unavailable" in detail for detail in refused), refused[:3]
    # Back by itself: no restart, the pools replace their broken connections.
    for url in (a, b):
        back = lambda url=url, n=task_id + 1: correct(n, url) == 200  # noqa: E731
        _wait(f"{url} to take corrections again", back, 30)
        task_id += 1
        predict(url)
    store = CorrectionStore(cluster["env"]["KIWI_DATABASE_URL"])
    stored = {int(doc.id) for doc in store.latest("labelstudio-7")}  # a task's id names its note
    store.close()
    assert set(acknowledged) <= stored, sorted(set(acknowledged) - stored)
