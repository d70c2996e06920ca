"""The retraining loop: gate, rejection, failures, busy projects, debounce, and kill -9 during training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from recommender.corpora import load_sample
from recommender.document import Document
from recommender.errors import BusyError, ConflictError
from recommender.extractors.lexicon import LexiconExtractor
from recommender.model_versions import REGISTRY_FILE, STAGING_DIR, ModelVersions
from recommender.progress import Progress
from recommender.retraining import Corpora, Retrainer, decide, get_trainer, heldout_split
from recommender.retraining.jobs import Job
from recommender.settings import Settings
from recommender.store import CorrectionStore


@pytest.fixture(scope="module")
def sample() -> list[Document]:
    return load_sample()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Settings, CorrectionStore, ModelVersions]]:
    settings = Settings(
        model_dir=tmp_path / "models",
        trainer="kiwi.lexicon.v1",
        retrain_every=3,
        retrain_debounce_seconds=0.0,
        heldout_fraction=0.5,
    )
    store = CorrectionStore(f"sqlite:///{tmp_path}/c.sqlite3")
    yield settings, store, ModelVersions(settings.model_dir)
    store.close()


def _retrainer(
    env: tuple[Settings, CorrectionStore, ModelVersions], sample: list[Document], **kw: object
) -> Retrainer:
    settings, store, model_versions = env
    return Retrainer(settings, store, model_versions, corpora=Corpora(seed=sample[:1], dev=sample[3:]), **kw)  # type: ignore[arg-type]


def _add_corrections(store: CorrectionStore, docs: Sequence[Document]) -> None:
    for d in docs:
        assert store.add("proj", d.id, "ann", "labelstudio", d) is not None


def test_first_job_promotes_and_calls_back(env, sample: list[Document]) -> None:
    _, store, model_versions = env
    _add_corrections(store, sample[1:3])
    promoted: list[Path] = []
    rt = _retrainer(env, sample, on_promote=promoted.append)
    job = rt.wait(rt.request("proj", "test", delay=0), timeout=60)
    assert (job.state, job.outcome) == ("finished", "promoted"), job.message
    assert promoted == [model_versions.current()]
    assert job.metrics["heldout_notes"] == 1 and job.metrics["dev_notes"] == 1
    assert job.metrics["candidate"]["dev"]["documents"] == 1
    info = json.loads((model_versions.current() / "kiwi_model.json").read_text())
    assert info["metrics"]["gate"]["decision"] == "promote"
    status = rt.status()
    assert status["current_version"] == job.candidate and status["last_metrics"]["decision"] == "promote"
    assert status["finished"][0]["progress"] == 1.0
    rt.shutdown()


def test_worse_candidate_is_rejected_with_reason(env, sample: list[Document]) -> None:
    _, store, model_versions = env
    # The current model has seen every note, dev included: no candidate can match it on dev.
    with model_versions.staging() as tmp:
        LexiconExtractor.train(sample).save(tmp)
        best = model_versions.add(tmp)
    model_versions.promote(best)
    _add_corrections(store, sample[1:3])
    rt = _retrainer(env, sample)
    job = rt.wait(rt.request("proj", delay=0), timeout=60)
    assert (job.state, job.outcome) == ("finished", "rejected")
    assert "dev score" in (job.message or "") and "< current" in (job.message or "")
    assert model_versions.current_version() == best
    statuses = {v.version: (v.status, v.reason) for v in model_versions.versions()}
    assert statuses[job.candidate] == ("rejected", job.message)
    assert rt.status()["last_rejection"] == {"job": job.id, "reason": job.message}
    rt.shutdown()


def test_margin_lets_a_slightly_worse_candidate_through() -> None:
    cand = {"dev": {"score": 0.50}}
    cur = {"dev": {"score": 0.52}}
    assert decide(cand, cur, 0.0)[0] is False
    assert decide(cand, cur, 0.05)[0] is True
    assert decide({}, cur, 0.0)[0] is True
    assert decide(cand, None, 0.0) == (True, "the first model: promoted as the baseline")


def test_crash_in_training_fails_the_job_not_the_worker(env, sample: list[Document]) -> None:
    _, store, model_versions = env
    _add_corrections(store, sample[1:3])
    calls = []

    def flaky(
        train: Sequence[Document], dev: Sequence[Document], out: Path, init: Path | None, **kw: object
    ) -> Path:
        calls.append(out)
        if len(calls) == 1:
            (out / "half-written.bin").write_bytes(b"x")
            raise RuntimeError("CUDA out of memory (simulated)")
        return get_trainer("kiwi.lexicon.v1")(train, dev, out, init, epochs=1)

    rt = _retrainer(env, sample, trainer=flaky)
    failed = rt.wait(rt.request("proj", delay=0), timeout=60)
    assert failed.state == "failed" and "RuntimeError" in (failed.message or "")
    assert "out of memory" in (failed.message or "")
    assert model_versions.versions() == [] and not calls[0].exists()
    ok = rt.wait(rt.request("proj", delay=0), timeout=60)
    assert ok.outcome == "promoted"
    rt.shutdown()


def test_busy_project_and_debounce(env, sample: list[Document]) -> None:
    _, store, _ = env
    _add_corrections(store, sample[1:3])
    entered, release = threading.Event(), threading.Event()

    def slow(
        train: Sequence[Document], dev: Sequence[Document], out: Path, init: Path | None, **kw: object
    ) -> Path:
        entered.set()
        release.wait(30)
        return get_trainer("kiwi.lexicon.v1")(train, dev, out, init, epochs=1)

    rt = _retrainer(env, sample, trainer=slow)
    first = rt.request("proj", delay=0)
    assert entered.wait(30)
    with pytest.raises(BusyError, match=r"\[proj\]"):
        rt.request("proj")
    assert rt.busy("proj") and not rt.busy("other")
    # Other projects queue; corrections keep counting and queue one follow-up job for the project.
    other = rt.request("other", delay=0)
    assert rt.notify_new_corrections("proj", 2) is None
    follow = rt.notify_new_corrections("proj", 1)
    again = rt.notify_new_corrections("proj", 3)
    assert follow is not None and again is follow and follow.triggers == 2
    assert [j["id"] for j in rt.status()["queued"]] == [other.id, follow.id]
    release.set()
    for job in (first, other, follow):
        assert rt.wait(job, timeout=60).state == "finished", job.message
    rt.shutdown()


def test_heldout_split_is_stable_and_groups_annotators(sample: list[Document]) -> None:
    docs = []
    for i in range(20):
        for annotator in ("a", "b"):
            d = Document(id=f"proj:{annotator}:n{i}", text=f"note {i}")
            d.meta["correction"] = {"project": "proj", "annotator": annotator}
            docs.append(d)
    train, held = heldout_split(docs, 0.25)
    assert 0 < len(held) < len(docs)
    held_notes = {d.id.split(":")[-1] for d in held}
    assert not held_notes & {d.id.split(":")[-1] for d in train}
    assert heldout_split(list(reversed(docs)), 0.25)[1] == list(reversed(held))  # order does not matter
    # Growing the corpus never moves a note from held out to training.
    more = docs + [
        Document(id=f"proj:a:x{i}", text="x", meta={"correction": {"project": "proj"}}) for i in range(9)
    ]
    assert held_notes <= {d.id.split(":")[-1] for d in heldout_split(more, 0.25)[1]}
    assert heldout_split(docs[:1], 0.5) == (docs[:1], [])


KILLED_TRAINER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from recommender.corpora import load_sample
    from recommender.model_versions import ModelVersions
    from recommender.retraining import Corpora, Retrainer
    from recommender.settings import Settings
    from recommender.store import CorrectionStore

    def stuck(train, dev, out, init, **kw):
        (out / "kiwi_model.json").write_text('{"extractor": "kiwi.lexicon.v1", "vers')  # half written
        print("training", flush=True)
        time.sleep(600)

    model_dir, db = Path(sys.argv[1]), sys.argv[2]
    settings = Settings(model_dir=model_dir, trainer="kiwi.lexicon.v1", retrain_debounce_seconds=0.0)
    docs = load_sample()
    rt = Retrainer(settings, CorrectionStore(db), ModelVersions(model_dir),
                   corpora=Corpora(seed=docs[:2], dev=docs[3:]), trainer=stuck)
    rt.request("proj", delay=0)
    time.sleep(600)
    """
)


def test_kill_during_training_leaves_the_model_versions_consistent(
    tmp_path: Path, sample: list[Document]
) -> None:
    model_dir = tmp_path / "models"
    db = f"sqlite:///{tmp_path}/c.sqlite3"
    model_versions = ModelVersions(model_dir)
    with model_versions.staging() as tmp:
        LexiconExtractor.train(sample[:2]).save(tmp)
        first = model_versions.add(tmp)
    model_versions.promote(first)
    store = CorrectionStore(db)
    _add_corrections(store, sample[1:3])
    store.close()
    before = (model_dir / REGISTRY_FILE).read_text()

    script = tmp_path / "train.py"
    script.write_text(KILLED_TRAINER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(model_dir), db], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "training"
    staged = [p for p in (model_dir / STAGING_DIR).iterdir() if p.is_dir()]
    assert len(staged) == 1 and (staged[0] / "kiwi_model.json").is_file()
    # Another process opening the model versions leaves a live trainer's candidate alone: liveness is the
    # trainer's lock on the folder's lease, not a process id another container could not see.
    ModelVersions(model_dir)
    assert (staged[0] / "kiwi_model.json").is_file()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)

    reopened = ModelVersions(model_dir)
    assert (model_dir / REGISTRY_FILE).read_text() == before
    assert reopened.current_version() == first
    assert [v.version for v in reopened.versions()] == [first]
    assert list((model_dir / STAGING_DIR).iterdir()) == []  # the dead process's candidate is gone
    # The service comes back and trains normally.
    store = CorrectionStore(db)
    rt = Retrainer(
        Settings(model_dir=model_dir, trainer="kiwi.lexicon.v1", retrain_debounce_seconds=0.0),
        store,
        reopened,
        corpora=Corpora(seed=sample[:2], dev=sample[3:]),
    )
    job = rt.wait(rt.request("proj", delay=0), timeout=60)
    assert job.state == "finished", job.message
    rt.shutdown()
    store.close()


def test_trainer_progress_moves_the_job(env, sample: list[Document]) -> None:
    _, store, _ = env
    _add_corrections(store, sample[1:3])
    seen: list[float] = []
    holder: dict[str, Retrainer] = {}

    def epochs(
        train: Sequence[Document],
        dev: Sequence[Document],
        out: Path,
        init: Path | None,
        *,
        track: Progress[Any],
        **kw: object,
    ) -> Path:
        for e in (1, 2):
            for _ in track(range(4), f"epoch {e}/2", 4):
                seen.append(holder["rt"].status()["running"][0]["progress"])
        return get_trainer("kiwi.lexicon.v1")(train, dev, out, init, epochs=1)

    rt = _retrainer(env, sample, trainer=epochs)
    holder["rt"] = rt
    rt.wait(rt.request("proj", delay=0), timeout=60)
    assert seen == sorted(seen) and seen[0] < 0.3 and 0.6 < seen[-1] <= 0.8
    rt.shutdown()


def test_promotion_is_compare_and_swap(env, sample: list[Document]) -> None:
    """A version promoted elsewhere while the job trained is not overwritten blindly: the candidate
    is gated again against it, and the job says so."""
    _, store, model_versions = env
    _add_corrections(store, sample[1:3])
    elsewhere: list[str] = []

    def racing(
        train: Sequence[Document], dev: Sequence[Document], out: Path, init: Path | None, **kw: object
    ) -> Path:
        with model_versions.staging() as tmp:  # an operator promotes another model meanwhile
            LexiconExtractor.train(sample[:1]).save(tmp)
            elsewhere.append(model_versions.add(tmp))
        model_versions.promote(elsewhere[0], reason="by hand")
        return get_trainer("kiwi.lexicon.v1")(train, dev, out, init, epochs=1)

    rt = _retrainer(env, sample, trainer=racing)
    job = rt.wait(rt.request("proj", delay=0), timeout=60)
    assert job.outcome == "promoted", job.message
    assert "not [None]" in job.metrics["regated"] and job.metrics["current_version"] == elsewhere[0]
    assert model_versions.current_version() == job.candidate
    assert [e["version"] for e in model_versions.events() if e["action"] == "promote"] == [
        elsewhere[0],
        job.candidate,
    ]
    with pytest.raises(ConflictError, match=r"\[" + job.candidate + r"\]"):
        model_versions.promote_if_current(elsewhere[0], None)
    rt.shutdown()


def test_a_running_job_says_when_it_should_end() -> None:
    job = Job(1, "p", "test", created=0.0, state="running", started=1000.0, progress=0.25)
    assert job.expected_end(now=1100.0) == 1400.0  # a quarter in 100 s: 300 s to go
    assert job.to_dict()["expected_end"] is not None
    assert replace(job, progress=0.04).expected_end(now=1100.0) is None  # still loading
    assert replace(job, state="finished").expected_end(now=1100.0) is None
