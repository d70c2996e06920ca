"""The retraining loop: stored corrections in, an evaluated and (maybe) promoted model out.

One background worker thread runs one job at a time. A job takes the newest version of every stored
correction (all projects: the service serves one model) plus the seed corpus, holds out a stable slice
of the corrected notes (chosen by a hash of project and document, so a note never moves between
training and evaluation as corrections accumulate), fine-tunes a candidate from the promoted model,
and scores candidate and promoted model on the held-out corrections and on the fixed development
set with ``recommender.evaluation``. The candidate is promoted only if, on every evaluation set that
has notes, its score (mean of exact NER and RE F1) is not lower than the current model's by more
than ``promotion_margin``; otherwise it is kept as a rejected version with the reason.

Triggers are debounced: a job waits ``retrain_debounce_seconds`` after the last trigger for its
project (at most four times that in all) so a burst of Label Studio submits or INCEpTION train calls
makes one job. The candidate is built in the registry's staging folder and renamed in whole, and the
promoted pointer changes only by an atomic replace, so killing the process at any moment leaves the
registry as it was or with one more complete version. An exception in training fails the job with its
reason; the worker and the service carry on.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from recommender.corpora import SAMPLE_DIR, SHARED_MTSAMPLES, split_documents
from recommender.document import Document
from recommender.errors import BusyError, ConfigError, KiwiError, NotFoundError
from recommender.evaluation import evaluate_extractor
from recommender.extractors import family, get_extractor_class, load_extractor
from recommender.extractors.base import ModelInfo
from recommender.formats import read_documents
from recommender.registry import ModelRegistry
from recommender.settings import Settings
from recommender.store import CorrectionStore

log = logging.getLogger(__name__)

Track = Callable[[Iterable[Any], str, int | None], Iterable[Any]]
RESAMPLES = 200  # bootstrap intervals only decorate the gate's figures; the decision uses point F1
MAX_DEBOUNCE_FACTOR = 4.0


class Trainer(Protocol):
    def __call__(
        self,
        train_docs: Sequence[Document],
        dev_docs: Sequence[Document],
        out_dir: Path,
        init_from: Path | None,
        *,
        epochs: int | None,
        track: Track | None = None,
    ) -> Path: ...


def get_trainer(name: str) -> Trainer:
    """The retraining loop's trainer for an extractor family: its own ``train`` with its default config,
    started from the promoted model when that is of the same family (its config has ``init_from``), and
    with ``epochs`` (and patience no longer than that) when a fixed count is asked for."""
    family(name)  # an unknown name fails now; the family's module (torch) loads with the first job

    def train(
        train_docs: Sequence[Document],
        dev_docs: Sequence[Document],
        out_dir: Path,
        init_from: Path | None,
        *,
        epochs: int | None,
        track: Track | None = None,
    ) -> Path:
        cls = get_extractor_class(name)
        names = {f.name for f in fields(cls.config_class)}  # type: ignore[arg-type]
        overrides: dict[str, Any] = {}
        if "init_from" in names and init_from is not None and _extractor_name(init_from) == cls.name:
            overrides["init_from"] = str(init_from)
        if epochs is not None and "epochs" in names:
            overrides["epochs"] = epochs
            if "patience" in names:
                overrides["patience"] = min(epochs, cls.config_class().patience)  # type: ignore[attr-defined]
        cls.train(train_docs, dev_docs, cls.config_class(**overrides), out_dir, progress=track)
        return out_dir

    return train


@dataclass
class Job:
    id: int
    project: str
    reason: str
    created: float  # time.time()
    not_before: float  # time.monotonic() when the debounce ends
    deadline: float  # time.monotonic() past which more triggers no longer delay it
    state: str = "queued"  # queued, running, finished, failed
    outcome: str | None = None  # promoted, rejected (when finished)
    stage: str = "queued"
    progress: float = 0.0
    started: float | None = None
    finished: float | None = None
    candidate: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str | None = None  # why rejected, or why failed
    triggers: int = 1
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def to_dict(self) -> dict[str, Any]:
        def stamp(t: float | None) -> str | None:
            return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds") if t is not None else None

        return {
            "id": self.id,
            "project": self.project,
            "reason": self.reason,
            "state": self.state,
            "outcome": self.outcome,
            "stage": self.stage,
            "progress": round(self.progress, 3),
            "created": stamp(self.created),
            "started": stamp(self.started),
            "finished": stamp(self.finished),
            "candidate": self.candidate,
            "metrics": self.metrics,
            "message": self.message,
            "triggers": self.triggers,
        }


@dataclass
class Corpora:
    """The notes a job uses besides the corrections: seed training notes and the fixed dev set."""

    seed: list[Document]
    dev: list[Document]


def default_corpora(settings: Settings) -> Corpora:
    """Seed and dev notes from the settings, else the shared MTSamples split (train as seed, the fixed
    16-note dev split as dev) when it sits beside the checkout, else the team's sample corpus as seed."""
    seed = read_documents(settings.seed_corpus) if settings.seed_corpus else None
    dev = read_documents(settings.dev_corpus) if settings.dev_corpus else None
    if seed is None or dev is None:
        if SHARED_MTSAMPLES.is_dir():
            shared_train, shared_dev = split_documents(read_documents(SHARED_MTSAMPLES))
        else:
            shared_train, shared_dev = read_documents(SAMPLE_DIR), []
        seed = shared_train if seed is None else seed
        dev = shared_dev if dev is None else dev
    dev_texts = {d.text for d in dev}
    return Corpora([d for d in seed if d.text not in dev_texts], dev)


def bootstrap(settings: Settings, registry: ModelRegistry, track: Track | None = None) -> Path:
    """Train a first model on the seed corpus with the configured trainer, register and promote it.

    Used by ``kiwi serve --bootstrap`` when the registry has no promoted model."""
    corpora = default_corpora(settings)
    if not corpora.seed:
        raise ConfigError("no seed notes to train a first model on; set KIWI_SEED_CORPUS")
    trainer = get_trainer(settings.trainer)
    with registry.staging() as tmp:
        out = trainer(corpora.seed, corpora.dev, tmp, None, epochs=None, track=track)
        version = registry.add(out)
    return registry.promote(version, reason="bootstrap on the seed corpus")


class Retrainer:
    """Background retraining for a running service. ``corpora`` and ``trainer`` default to the
    settings; tests pass small ones."""

    def __init__(
        self,
        settings: Settings,
        store: CorrectionStore,
        registry: ModelRegistry,
        on_promote: Callable[[Path], None] | None = None,
        *,
        corpora: Corpora | None = None,
        trainer: Trainer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.on_promote = on_promote
        self._corpora = corpora
        self._trainer = trainer or get_trainer(settings.trainer)
        self._jobs: list[Job] = []
        self._pending: dict[str, int] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._next_id = 1

    # --- triggers ------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stop = False
                self._thread = threading.Thread(target=self._work, name="kiwi-retrainer", daemon=True)
                self._thread.start()

    def busy(self, project: str) -> bool:
        with self._cond:
            return any(j.project == project and j.state == "running" for j in self._jobs)

    def request(self, project: str, reason: str = "on demand", *, delay: float | None = None) -> Job:
        """Queue a job for ``project`` (or join the one already queued, pushing its start back).

        Raises:
            BusyError: a job for ``project`` is running (INCEpTION gets 429 and retries later).
        """
        with self._cond:
            if any(j.project == project and j.state == "running" for j in self._jobs):
                raise BusyError(f"a training job for project [{project}] is running")
            return self._enqueue(project, reason, delay)

    def notify_new_corrections(self, project: str, n: int = 1) -> Job | None:
        """Count newly stored corrections; every ``retrain_every`` of them queue a job (after the
        running one, if any)."""
        with self._cond:
            self._pending[project] = self._pending.get(project, 0) + n
            if self._pending[project] < self.settings.retrain_every:
                return None
            self._pending[project] = 0
            return self._enqueue(project, f"{self.settings.retrain_every} new corrections", None)

    def _enqueue(self, project: str, reason: str, delay: float | None) -> Job:
        delay = self.settings.retrain_debounce_seconds if delay is None else delay
        now = time.monotonic()
        for job in self._jobs:
            if job.project == project and job.state == "queued":
                job.not_before = min(max(job.not_before, now + delay), job.deadline)
                job.triggers += 1
                self._cond.notify_all()
                return job
        job = Job(
            self._next_id,
            project,
            reason,
            created=time.time(),
            not_before=now + delay,
            deadline=now + max(delay * MAX_DEBOUNCE_FACTOR, delay),
        )
        self._next_id += 1
        self._jobs.append(job)
        self._cond.notify_all()
        self.start()
        return job

    # --- status --------------------------------------------------------------------------------
    def job(self, job_id: int) -> Job:
        with self._cond:
            for j in self._jobs:
                if j.id == job_id:
                    return j
        raise NotFoundError(f"no training job [{job_id}]")

    def wait(self, job: Job, timeout: float | None = None) -> Job:
        if not job.done.wait(timeout):
            raise TimeoutError(f"training job {job.id} still {job.state} after {timeout} s")
        return job

    def status(self) -> dict[str, Any]:
        with self._cond:
            jobs = [j.to_dict() for j in self._jobs]
        ended = [j for j in jobs if j["state"] in ("finished", "failed")]
        last = ended[-1] if ended else None
        rejected = [j for j in ended if j["outcome"] == "rejected"]
        return {
            "current_version": self.registry.current_version(),
            "trainer": self.settings.trainer,
            "queued": [j for j in jobs if j["state"] == "queued"],
            "running": [j for j in jobs if j["state"] == "running"],
            "finished": ended[-20:],
            "last_metrics": last["metrics"] if last else None,
            "last_rejection": {"job": rejected[-1]["id"], "reason": rejected[-1]["message"]}
            if rejected
            else None,
            "pending_corrections": dict(self._pending),
        }

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop taking jobs; a job in training finishes in the background thread (a daemon)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # --- the worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                job = self._next_due()
                while job is None and not self._stop:
                    queued = [j.not_before for j in self._jobs if j.state == "queued"]
                    self._cond.wait(max(min(queued) - time.monotonic(), 0.01) if queued else None)
                    job = self._next_due()
                if self._stop:
                    return
                assert job is not None
                job.state, job.started = "running", time.time()
            self._run(job)

    def _next_due(self) -> Job | None:
        now = time.monotonic()
        due = [j for j in self._jobs if j.state == "queued" and j.not_before <= now]
        return min(due, key=lambda j: j.not_before) if due else None

    def _run(self, job: Job) -> None:
        try:
            self._train_and_gate(job)
            job.state = "finished"
        except Exception as e:  # a failed job must never take the worker or the service down
            job.state = "failed"
            job.message = f"{type(e).__name__}: {e}" if isinstance(e, KiwiError) else _brief(e)
            log.error("training job %d failed: %s", job.id, job.message)
            log.debug("training job %d traceback:\n%s", job.id, traceback.format_exc())
        finally:
            job.finished = time.time()
            job.progress = 1.0
            job.stage = job.state
            job.done.set()

    def _train_and_gate(self, job: Job) -> None:
        job.stage = "loading corrections"
        if self._corpora is None:
            self._corpora = default_corpora(self.settings)  # read once; the seed and dev sets are fixed
        corpora = self._corpora
        # Labels outside the schema stay in the store; models learn and are scored on the schema's.
        corrections = [_unique(d).in_schema() for d in self.store.latest()]
        train_corr, heldout = heldout_split(corrections, self.settings.heldout_fraction)
        blocked = {d.text for d in heldout} | {d.text for d in corpora.dev}
        train = [d.in_schema() for d in corpora.seed if d.text not in blocked] + [
            d for d in train_corr if d.text not in blocked
        ]
        if not train:
            raise ConfigError("nothing to train on: no stored corrections and no seed notes")
        job.metrics = {
            "train_notes": len(train),
            "heldout_notes": len(heldout),
            "dev_notes": len(corpora.dev),
        }
        current = self.registry.current()

        with self.registry.staging() as tmp:
            job.stage, job.progress = "training", 0.05
            out = self._trainer(
                train, corpora.dev, tmp, current, epochs=self.settings.train_epochs, track=_tracker(job)
            )
            job.stage, job.progress = "evaluating", 0.8
            candidate = load_extractor(out)
            cand_scores = _scores(candidate, heldout, corpora.dev)
            cur_scores = _scores(load_extractor(current), heldout, corpora.dev) if current else None
            promote, reason = decide(cand_scores, cur_scores, self.settings.promotion_margin)
            gate = {
                "candidate": cand_scores,
                "current": cur_scores,
                "current_version": current.name if current else None,
                "margin": self.settings.promotion_margin,
                "decision": "promote" if promote else "reject",
                "reason": reason,
            }
            info = ModelInfo.load(out)
            info.metrics = {**info.metrics, "gate": gate, "job": job.id, "trigger": job.reason}
            info.save(out)
            job.stage, job.progress = "registering", 0.95
            version = self.registry.add(out)
        job.candidate = version
        job.metrics = {**job.metrics, **gate}
        if not promote:
            self.registry.reject(version, reason)
            job.outcome, job.message = "rejected", reason
            log.info("job %d: candidate %s rejected: %s", job.id, version, reason)
            return
        path = self.registry.promote(version, reason=f"job {job.id}: {reason}")
        job.outcome = "promoted"
        log.info("job %d: promoted %s", job.id, version)
        if self.on_promote is not None:
            self.on_promote(path)


def heldout_split(docs: Sequence[Document], fraction: float) -> tuple[list[Document], list[Document]]:
    """(train, held out) by a stable hash of each note's project and document id; with two or more
    corrected notes and a positive fraction, at least one is held out."""
    if fraction <= 0 or not docs:
        return list(docs), []
    groups = sorted({_group(d) for d in docs}, key=_hash)
    held = {g for g in groups if _hash(g) < fraction}
    if not held and len(groups) >= 2:
        held = {groups[0]}
    if len(held) == len(groups):
        held.discard(groups[-1])  # keep something to learn from
    return [d for d in docs if _group(d) not in held], [d for d in docs if _group(d) in held]


def decide(
    candidate: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]] | None, margin: float
) -> tuple[bool, str]:
    """Promote unless the candidate is worse than the current model by more than ``margin`` on any
    evaluation set with notes. Returns (promote, reason)."""
    if current is None:
        return True, "no model was promoted yet"
    if not candidate:
        return True, "no held-out corrections or dev notes to compare on"
    worse = []
    parts = []
    for name, cand in candidate.items():
        a, b = cand["score"], current[name]["score"]
        parts.append(f"{name} {a:.4f} vs {b:.4f}")
        if a < b - margin:
            worse.append(f"{name} score {a:.4f} < current {b:.4f} - margin {margin}")
    if worse:
        return False, "; ".join(worse)
    return True, "not worse: " + ", ".join(parts)


def _scores(
    extractor: Any, heldout: Sequence[Document], dev: Sequence[Document]
) -> dict[str, dict[str, Any]]:
    out = {}
    for name, docs in (("heldout", heldout), ("dev", dev)):
        if docs:
            ev = evaluate_extractor(extractor, docs, resamples=RESAMPLES).to_dict()
            slim = {t: {"exact": _slim(ev[t]["exact"])} for t in ("ner", "re", "spans")}
            score = (ev["ner"]["exact"]["f1"] + ev["re"]["exact"]["f1"]) / 2
            out[name] = {**slim, "score": round(score, 4), "documents": len(docs)}
    return out


def _slim(score: dict[str, Any]) -> dict[str, Any]:
    return {
        k: round(score[k], 4) if isinstance(score[k], float) else score[k]
        for k in ("precision", "recall", "f1", "tp", "fp", "fn")
    }


def _tracker(job: Job) -> Track:
    """A progress wrapper for trainers: each pass over batches moves the job between 5% and 80%."""

    def track(items: Iterable[Any], description: str, total: int | None) -> Iterable[Any]:
        job.stage = f"training: {description}"
        for i, item in enumerate(items, 1):
            if total:
                job.progress = max(
                    job.progress, min(0.8, 0.05 + 0.75 * i / total * _epoch_share(description))
                )
            yield item

    return track


def _epoch_share(description: str) -> float:
    """'epoch 2/3' -> 2/3, so the bar moves across epochs; 1 when the description has no epoch."""
    try:
        done, total = description.split()[-1].split("/")
        return int(done) / int(total)
    except ValueError:
        return 1.0


def _unique(doc: Document) -> Document:
    """Corrections of one note by several annotators or projects need distinct ids for scoring."""
    c = doc.meta.get("correction", {})
    return replace(doc, id=f"{c.get('project', '')}:{c.get('annotator', '')}:{doc.id}")


def _group(doc: Document) -> str:
    c = doc.meta.get("correction", {})
    return f"{c.get('project', '')}\x00{doc.id.split(':', 2)[-1]}"


def _hash(group: str) -> float:
    return int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _extractor_name(folder: Path) -> str:
    return ModelInfo.load(folder).extractor


def _brief(e: BaseException) -> str:
    """A one-line reason without note text: exception type and the innermost frame."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}{where}: {str(e)[:200]}"


__all__ = [
    "Corpora",
    "Job",
    "Retrainer",
    "Trainer",
    "bootstrap",
    "decide",
    "default_corpora",
    "get_trainer",
    "heldout_split",
]
