"""Training jobs through the job library on a real PostgreSQL: one job per project across replicas,
the debounce counted from the store, state visible from every replica, a dead trainer's job retried."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from recommender.corpora import load_sample
from recommender.document import Document
from recommender.errors import BusyError
from recommender.model_versions import ModelVersions
from recommender.retraining import Corpora, get_trainer
from recommender.retraining.queue import JobQueue
from recommender.settings import Settings
from recommender.store import CorrectionStore


@pytest.fixture(scope="module")
def sample() -> list[Document]:
    return load_sample()


@pytest.fixture
def pg_env(postgres, tmp_path: Path) -> Iterator[tuple[Settings, CorrectionStore, ModelVersions]]:
    url = postgres.new_database()
    settings = Settings(
        model_dir=tmp_path / "models",
        database_url=url,
        trainer="kiwi.lexicon.v1",
        retrain_every=3,
        retrain_debounce_seconds=0.0,
        heldout_fraction=0.5,
        job_heartbeat_seconds=0.3,
        job_stalled_seconds=2.0,
    )
    store = CorrectionStore(url)
    yield settings, store, ModelVersions(settings.model_dir)
    store.close()


def _queue(
    env: tuple[Settings, CorrectionStore, ModelVersions], sample: list[Document], **kw: object
) -> JobQueue:
    settings, store, model_versions = env
    return JobQueue(settings, store, model_versions, corpora=Corpora(seed=sample[:1], dev=sample[3:]), **kw)  # type: ignore[arg-type]


def _add(store: CorrectionStore, docs: Sequence[Document], project: str = "proj") -> None:
    for d in docs:
        assert store.add(project, d.id, "ann", "labelstudio", d) is not None


def test_replicas_share_one_queued_job_and_its_state(pg_env, sample: list[Document]) -> None:
    store = pg_env[1]
    _add(store, sample[1:3])
    api_a, api_b = _queue(pg_env, sample), _queue(pg_env, sample)
    first = api_a.request("proj", "from A", delay=30)
    joined = api_b.request("proj", "from B", delay=30)
    assert joined.id == first.id and api_a.job(first.id).triggers == 2
    other = api_b.request("other", delay=30)
    assert other.id != first.id
    assert [j["id"] for j in api_a.status()["queued"]] == [first.id, other.id]
    api_a.shutdown()
    api_b.shutdown()


def test_debounce_counts_corrections_in_the_store(pg_env, sample: list[Document]) -> None:
    store = pg_env[1]
    api_a, api_b = _queue(pg_env, sample), _queue(pg_env, sample)
    _add(store, sample[1:3])
    assert api_a.notify_new_corrections("proj", 2) is None  # 2 of 3
    _add(store, sample[3:4])
    job = api_b.notify_new_corrections("proj", 1)  # another replica sees the same count
    assert job is not None and job.reason == "3 new corrections"
    assert api_a.status()["pending_corrections"] == {"proj": 0}
    api_a.shutdown()
    api_b.shutdown()


def test_trainer_runs_the_job_and_every_replica_sees_it(pg_env, sample: list[Document]) -> None:
    _, store, model_versions = pg_env
    _add(store, sample[1:3])
    trainer = _queue(pg_env, sample)
    trainer.start_worker()
    api = _queue(pg_env, sample)
    job = api.wait(api.request("proj", "test", delay=0), timeout=60)
    assert (job.state, job.outcome, job.attempts) == ("finished", "promoted", 1), job.message
    assert model_versions.current_version() == job.candidate
    assert job.metrics["decision"] == "promote" and job.metrics["heldout_notes"] == 1
    assert api.status()["finished"][-1]["id"] == job.id
    trainer.shutdown()
    api.shutdown()


def test_busy_while_running(pg_env, sample: list[Document]) -> None:
    import threading

    store = pg_env[1]
    _add(store, sample[1:3])
    entered, release = threading.Event(), threading.Event()

    def slow(train, dev, out, init, **kw):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(30)
        return get_trainer("kiwi.lexicon.v1")(train, dev, out, init, epochs=1)

    trainer = _queue(pg_env, sample, trainer=slow)
    trainer.start_worker()
    first = trainer.request("proj", delay=0)
    assert entered.wait(30)
    api = _queue(pg_env, sample)
    assert api.busy("proj") and api.job(first.id).state == "running"
    with pytest.raises(BusyError, match=r"\[proj\]"):
        api.request("proj")
    release.set()
    assert api.wait(first, timeout=60).state == "finished"
    trainer.shutdown()
    api.shutdown()
