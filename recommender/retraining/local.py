"""The in-process scheduler (SQLite, one process): one background thread runs one job at a time.

Triggers are debounced: a job waits ``retrain_debounce_seconds`` after the last trigger for its
project (at most four times that in all) so a burst of Label Studio submits or INCEpTION train calls
makes one job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recommender.errors import BusyError, NotFoundError
from recommender.model_versions import ModelVersions
from recommender.retraining.jobs import Job, JobRunner, summary
from recommender.retraining.trainers import Trainer, get_trainer
from recommender.retraining.training_data import Corpora
from recommender.settings import Settings
from recommender.store import CorrectionStore

MAX_DEBOUNCE_FACTOR = 4.0


class Retrainer:
    """Background retraining for a running service. ``corpora`` and ``trainer`` default to the
    settings; tests pass small ones."""

    def __init__(
        self,
        settings: Settings,
        store: CorrectionStore,
        model_versions: ModelVersions,
        on_promote: Callable[[Path], None] | None = None,
        *,
        corpora: Corpora | None = None,
        trainer: Trainer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.model_versions = model_versions
        self.runner = JobRunner(
            settings,
            store,
            model_versions,
            trainer or get_trainer(settings.trainer, settings.trainer_config),
            corpora,
            on_promote,
        )
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
            pending = dict(self._pending)
        return {
            "current_version": self.model_versions.current_version(),
            "trainer": self.settings.trainer,
            "scheduler": "in-process",
            **summary(jobs),
            "pending_corrections": pending,
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
                job.state, job.started, job.attempts = "running", time.time(), 1
            self.runner.run(job)

    def _next_due(self) -> Job | None:
        now = time.monotonic()
        due = [j for j in self._jobs if j.state == "queued" and j.not_before <= now]
        return min(due, key=lambda j: j.not_before) if due else None


__all__ = ["Retrainer"]
