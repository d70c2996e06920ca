"""The job-library scheduler (PostgreSQL): retraining jobs through procrastinate.

Any replica queues a job: a row in ``training_jobs`` (what every replica reads for ``/jobs/{id}``)
and a procrastinate job with a queueing lock per project, so a project has at most one job waiting
across all processes; a trigger while one waits joins it. The retrain-every-N count is the number of
corrections stored since the last job was queued, read from the store, so it holds across replicas
and restarts. Trainer processes run the jobs one at a time under a global lock (the service serves
one model). A trainer that dies mid-job stops its heartbeat; any live trainer puts the job back in
the queue after ``job_stalled_seconds`` and runs it again from the start (same job id, one more
attempt). Training runs in a thread, so heartbeats continue during a long epoch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recommender.errors import BusyError, ConfigError, NotFoundError
from recommender.model_versions import ModelVersions
from recommender.retraining.jobs import Job, JobRunner, summary
from recommender.retraining.trainers import Trainer, get_trainer
from recommender.retraining.training_data import Corpora
from recommender.settings import Settings
from recommender.store import CorrectionStore
from recommender.store.database import libpq_dsn
from recommender.store.job_records import JobRecords

log = logging.getLogger(__name__)

TASK = "kiwi.train"
LOCK = "kiwi-train"  # one training job at a time across all trainers
SAVE_EVERY_SECONDS = 0.5  # progress writes per running job


class JobQueue:
    """The same interface as the in-process ``Retrainer``; ``run_worker`` makes this process a trainer."""

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
        try:
            import procrastinate
        except ImportError:
            raise ConfigError("training jobs on PostgreSQL need kiwi-recommender[postgres]") from None
        self._procrastinate = procrastinate
        self.settings = settings
        self.store = store
        self.model_versions = model_versions
        self.records = JobRecords(store.engine)
        self.runner = JobRunner(
            settings,
            store,
            model_versions,
            trainer or get_trainer(settings.trainer, settings.trainer_config),
            corpora,
            on_promote,
        )
        self._dsn = libpq_dsn(store.url)
        self._app, self._task = self._make_app()
        self._opened = False
        self._open_lock = threading.Lock()
        self._worker_loop: asyncio.AbstractEventLoop | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._worker_thread: threading.Thread | None = None

    def _make_app(self) -> tuple[Any, Any]:
        """A procrastinate app and its training task; each event loop (API thread, worker) has its own."""
        p = self._procrastinate
        app = p.App(connector=p.PsycopgConnector(conninfo=self._dsn, min_size=1, max_size=4))

        @app.task(name=TASK, lock=LOCK)
        async def train(job_id: int) -> None:
            await asyncio.to_thread(self._run, job_id)

        return app, train

    # --- triggers (any replica) ------------------------------------------------------------------
    def busy(self, project: str) -> bool:
        return self.records.running(project)

    def request(self, project: str, reason: str = "on demand", *, delay: float | None = None) -> Job:
        """Queue a job for ``project`` or join the one waiting.

        Raises:
            BusyError: a job for ``project`` is running (INCEpTION gets 429 and retries later).
        """
        if self.records.running(project):
            raise BusyError(f"a training job for project [{project}] is running")
        return self._enqueue(project, reason, delay)

    def notify_new_corrections(self, project: str, n: int = 1) -> Job | None:
        """Queue a job once ``retrain_every`` corrections were stored since the last one was queued."""
        since = self.records.last_correction(project)
        if self.store.count_since(project, since) < self.settings.retrain_every:
            return None
        return self._enqueue(project, f"{self.settings.retrain_every} new corrections", None)

    def _enqueue(self, project: str, reason: str, delay: float | None) -> Job:
        delay = self.settings.retrain_debounce_seconds if delay is None else delay
        last = self.store.last_id(project)
        job_id = self.records.create(project, reason, last)
        if job_id is None:
            joined = self.records.join(project, last)
            if joined is not None:
                return self.job(joined)
            job_id = self.records.create(project, reason, last)  # the waiting one started meanwhile
            if job_id is None:
                return self.job(self.records.join(project, last) or 0)
        self._open()
        try:
            self._task.configure(queueing_lock=f"{LOCK}:{project}", schedule_in={"seconds": delay}).defer(
                job_id=job_id
            )
        except self._procrastinate.exceptions.AlreadyEnqueued:
            self.records.fail(job_id, f"a job for project [{project}] already waits in the job library")
        except Exception as e:
            self.records.fail(job_id, f"could not queue the job ({type(e).__name__})")
            raise
        return self.job(job_id)

    def _open(self) -> None:
        with self._open_lock:
            if not self._opened:
                self._app.open()
                self._opened = True

    # --- status (any replica) --------------------------------------------------------------------
    def job(self, job_id: int) -> Job:
        record = self.records.get(job_id)
        if record is None:
            raise NotFoundError(f"no training job [{job_id}]")
        return _job(record)

    def wait(self, job: Job, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.job(job.id)
            if current.state in ("finished", "failed"):
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"training job {job.id} still {current.state} after {timeout} s")
            time.sleep(0.2)

    def status(self) -> dict[str, Any]:
        jobs = [_job(r).to_dict() for r in self.records.recent()]
        pending = {
            p: self.store.count_since(p, self.records.last_correction(p)) for p in self.store.projects()
        }
        return {
            "current_version": self.model_versions.current_version(),
            "trainer": self.settings.trainer,
            "scheduler": "procrastinate",
            **summary(jobs),
            "pending_corrections": pending,
        }

    # --- the trainer -----------------------------------------------------------------------------
    def start_worker(self) -> None:
        """Run the worker in a background thread (``--role all``)."""
        self._worker_thread = threading.Thread(
            target=self.run_worker, kwargs={"signals": False}, name="kiwi-trainer", daemon=True
        )
        self._worker_thread.start()

    def run_worker(self, *, signals: bool = True) -> None:
        """Run jobs until stopped (SIGINT/SIGTERM when ``signals``, else ``shutdown``)."""
        asyncio.run(self._worker(signals))

    async def _worker(self, signals: bool) -> None:
        app, _ = self._make_app()  # its own connection pool on this thread's event loop
        async with app.open_async():
            self._worker_loop = asyncio.get_running_loop()
            await self._retry_stalled(app)
            sweeper = asyncio.create_task(self._sweep(app))
            self._worker_task = asyncio.create_task(
                app.run_worker_async(
                    name="kiwi-trainer",
                    concurrency=1,
                    install_signal_handlers=signals,
                    update_heartbeat_interval=self.settings.job_heartbeat_seconds,
                    stalled_worker_timeout=self.settings.job_stalled_seconds,
                    fetch_job_polling_interval=self.settings.job_heartbeat_seconds,
                    delete_jobs="successful",
                )
            )
            try:
                await self._worker_task
            except asyncio.CancelledError:
                pass
            finally:
                sweeper.cancel()

    async def _sweep(self, app: Any) -> None:
        while True:
            await asyncio.sleep(self.settings.job_heartbeat_seconds)
            await self._retry_stalled(app)

    async def _retry_stalled(self, app: Any) -> None:
        """Put back the jobs of trainers whose heartbeat stopped (killed, or their host went away)."""
        try:
            stalled = await app.job_manager.get_stalled_jobs(
                task_name=TASK, seconds_since_heartbeat=self.settings.job_stalled_seconds
            )
            for job in stalled:
                log.warning("training job %s: its trainer stopped answering; running it again", job.id)
                await app.job_manager.retry_job(job)
        except Exception as e:  # the sweep must outlive a database restart
            log.warning("stalled-job sweep failed: %s", type(e).__name__)

    def _run(self, job_id: int) -> None:
        record = self.records.claim(job_id, self.store.last_id())
        if record is None:
            log.warning("training job %d is not waiting or running; skipped", job_id)
            return
        job = _job(record)
        self.runner.run(job, self._saver(job_id))

    def _saver(self, job_id: int) -> Callable[[Job], None]:
        last: dict[str, Any] = {"at": 0.0, "stage": None}

        def save(job: Job) -> None:
            now = time.monotonic()
            if (
                job.stage == last["stage"]
                and job.state == "running"
                and now - last["at"] < SAVE_EVERY_SECONDS
            ):
                return
            last["at"], last["stage"] = now, job.stage
            try:
                self.records.save(job_id, job.to_dict() | {"finished": job.finished})
            except Exception as e:  # progress is a courtesy; the final save is retried by the next one
                log.warning("training job %d: cannot record progress (%s)", job_id, type(e).__name__)

        return save

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the worker thread (a job in training finishes first, up to ``timeout``) and the pool."""
        loop, task = self._worker_loop, self._worker_task
        if loop is not None and task is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)
        if self._worker_thread is not None:
            self._worker_thread.join(timeout)
        with self._open_lock:
            if self._opened:
                self._app.close()
                self._opened = False


def _job(record: dict[str, Any]) -> Job:
    job = Job(
        record["id"],
        record["project"],
        record["reason"],
        created=record["created"],
        state=record["state"],
        outcome=record["outcome"],
        stage=record["stage"],
        progress=record["progress"],
        started=record["started"],
        finished=record["finished"],
        candidate=record["candidate"],
        metrics=record["metrics"],
        message=record["message"],
        triggers=record["triggers"],
        attempts=record["attempts"],
    )
    if job.state in ("finished", "failed"):
        job.done.set()
    return job


__all__ = ["JobQueue"]
