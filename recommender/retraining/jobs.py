"""One retraining job, whichever scheduler runs it: assemble the data, train a candidate from the
promoted model, gate it against the promoted model, add it as a version, and promote it by
compare-and-swap.

The candidate is built in the model versions' staging folder and renamed in whole, and the promoted
pointer changes only by an atomic replace, so killing the process at any moment leaves the model
versions as they were or with one more complete version. Promotion succeeds only while the version
the candidate was gated against is still the promoted one; if another job, an operator or a rollback
changed it meanwhile, the candidate is gated once more against the new one, and rejected if that
changes too.
An exception fails the job with its reason; the scheduler and the service carry on.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recommender.cores import core_budget, set_torch_threads
from recommender.errors import ConflictError, KiwiError
from recommender.extractors import load_extractor
from recommender.extractors.base import ModelInfo
from recommender.model_versions import ModelVersions
from recommender.progress import Progress, reporting
from recommender.retraining import recent
from recommender.retraining.gate import decide, scores
from recommender.retraining.trainers import Trainer
from recommender.retraining.training_data import Corpora, assemble, default_corpora
from recommender.settings import Settings
from recommender.store import CorrectionStore
from recommender.store.suggestions import SuggestionLog

log = logging.getLogger(__name__)


@dataclass
class Job:
    id: int
    project: str
    reason: str
    created: float  # time.time()
    not_before: float = 0.0  # time.monotonic() when the debounce ends (in-process scheduler)
    deadline: float = 0.0  # time.monotonic() past which more triggers no longer delay it
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
    attempts: int = 0  # runs started: more than one when a worker died during the job
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def expected_end(self, now: float | None = None) -> float | None:
        """When a running job should end (``time.time()``), from the share of its progress made so
        far; None before training has moved it past loading (5%)."""
        if self.state != "running" or self.started is None or self.progress <= 0.05:
            return None
        now = time.time() if now is None else now
        return now + (now - self.started) * (1 - self.progress) / self.progress

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
            "expected_end": stamp(self.expected_end()),
            "candidate": self.candidate,
            "metrics": self.metrics,
            "message": self.message,
            "triggers": self.triggers,
            "attempts": self.attempts,
        }


def summary(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The job lists of ``/status`` and ``/jobs`` from job dicts, oldest first."""
    ended = [j for j in jobs if j["state"] in ("finished", "failed")]
    last = ended[-1] if ended else None
    rejected = [j for j in ended if j["outcome"] == "rejected"]
    return {
        "queued": [j for j in jobs if j["state"] == "queued"],
        "running": [j for j in jobs if j["state"] == "running"],
        "finished": ended[-20:],
        "last_metrics": last["metrics"] if last else None,
        "last_rejection": {"job": rejected[-1]["id"], "reason": rejected[-1]["message"]}
        if rejected
        else None,
    }


class JobRunner:
    """Runs jobs for a scheduler. ``save`` is called whenever the job's stage changes (the job-library
    scheduler writes it to the database there); ``on_promote`` gets the promoted folder."""

    def __init__(
        self,
        settings: Settings,
        store: CorrectionStore,
        model_versions: ModelVersions,
        trainer: Trainer,
        corpora: Corpora | None,
        on_promote: Callable[[Path], None] | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.model_versions = model_versions
        self.trainer = trainer
        self._corpora = corpora
        self.on_promote = on_promote
        self._recent: dict[int, Any] = {}  # the candidate's predictions for held-out corrected notes

    def run(self, job: Job, save: Callable[[Job], None] = lambda job: None) -> None:
        """Run ``job`` to ``finished`` or ``failed``; never raises for a failure of the job itself."""
        set_torch_threads(core_budget(self.settings).trainer_threads)  # this thread's share of the cores
        try:
            self._train_and_gate(job, save)
            job.state = "finished"
        except Exception as e:  # a failed job must never take the scheduler or the service down
            job.state = "failed"
            job.message = f"{type(e).__name__}: {e}" if isinstance(e, KiwiError) else brief(e)
            log.error("training job %d failed: %s", job.id, job.message)
            log.debug("training job %d traceback:\n%s", job.id, traceback.format_exc())
        finally:
            job.finished = datetime.now(UTC).timestamp()
            job.progress = 1.0
            job.stage = job.state
            save(job)
            job.done.set()

    def _train_and_gate(self, job: Job, save: Callable[[Job], None]) -> None:
        job.stage = "loading corrections"
        save(job)
        if self._corpora is None:
            self._corpora = default_corpora(self.settings)  # read once; the seed and dev sets are fixed
        data = assemble(
            self.store, self._corpora, self.settings.heldout_fraction, self.settings.retrain_agreement
        )
        job.metrics = data.counts()
        current_version = self.model_versions.current_version()
        current = self.model_versions.path(current_version) if current_version else None

        with self.model_versions.staging() as tmp:
            job.stage, job.progress = "training", 0.05
            save(job)
            out = self.trainer(
                data.train,
                data.dev,
                tmp,
                current,
                epochs=self.settings.train_epochs,
                track=tracker(job, save),
            )
            job.stage, job.progress = "evaluating", 0.8
            save(job)
            candidate = load_extractor(out)
            cand_scores = scores(candidate, data.heldout, data.dev)
            if self.settings.gate_recent_notes:  # the candidate on recently corrected notes (optional)
                self._recent = recent.predict_heldout(candidate, data.heldout)
            gate = self._gate(cand_scores, current_version, data.heldout, data.dev)
            info = ModelInfo.load(out)
            info.metrics = {
                **info.metrics,
                "gate": gate,
                "job": job.id,
                "trigger": job.reason,
                "corrections": data.counts(),  # the status page's learning curve from real corrections
            }
            info.save(out)
            job.stage, job.progress = "registering", 0.95
            save(job)
            version = self.model_versions.add(out)
        job.candidate = version
        job.metrics = {**job.metrics, **gate}
        for attempt in range(2):
            if gate["decision"] != "promote":
                self.model_versions.reject(version, gate["reason"])
                job.outcome, job.message = "rejected", gate["reason"]
                log.info("job %d: candidate %s rejected: %s", job.id, version, gate["reason"])
                return
            try:
                path = self.model_versions.promote_if_current(
                    version, gate["current_version"], reason=f"job {job.id}: {gate['reason']}"
                )
                break
            except ConflictError as e:
                if attempt == 1:
                    reason = f"gave up: the promoted model changed twice during the job ({e})"
                    self.model_versions.reject(version, reason)
                    job.outcome, job.message = "rejected", reason
                    return
                job.stage = "re-gating against the newly promoted model"
                save(job)
                log.info("job %d: %s; gating again", job.id, e)
                now = self.model_versions.current_version()
                gate = {**self._gate(cand_scores, now, data.heldout, data.dev), "regated": str(e)}
                job.metrics = {**job.metrics, **gate}
        job.outcome = "promoted"
        log.info("job %d: promoted %s", job.id, version)
        if self.on_promote is not None:
            self.on_promote(path)

    def _gate(
        self, cand_scores: dict[str, Any], current_version: str | None, heldout: list[Any], dev: list[Any]
    ) -> dict[str, Any]:
        current = self.model_versions.path(current_version) if current_version else None
        cur_scores = scores(load_extractor(current), heldout, dev) if current else None
        promote, reason = decide(cand_scores, cur_scores, self.settings.promotion_margin)
        extra: dict[str, Any] = {}
        if self.settings.gate_recent_notes and cur_scores is not None:
            passes, why, figures = recent.check(
                SuggestionLog(self.store.engine),
                current_version,
                heldout,
                self._recent,
                self.settings.gate_recent_notes,
                self.settings.promotion_margin,
            )
            extra["recent"] = figures
            if promote and not passes:
                promote, reason = False, why
            else:
                reason = f"{reason}; {why}"
        return {
            **extra,
            "candidate": cand_scores,
            "current": cur_scores,
            "current_version": current_version,
            "margin": self.settings.promotion_margin,
            "decision": "promote" if promote else "reject",
            "reason": reason,
        }


def tracker(job: Job, save: Callable[[Job], None]) -> Progress[Any]:
    """A progress wrapper for trainers: each pass over batches moves the job between 5% and 80%."""

    def track(items: Iterable[Any], description: str, total: int | None) -> Iterable[Any]:
        job.stage = f"training: {description}"
        save(job)
        lines = reporting(items, f"job {job.id} {description}", total, log.info)
        for i, item in enumerate(lines, 1):
            if total:
                job.progress = max(
                    job.progress, min(0.8, 0.05 + 0.75 * i / total * _epoch_share(description))
                )
                save(job)
            yield item

    return track


def _epoch_share(description: str) -> float:
    """'epoch 2/3' -> 2/3, so the bar moves across epochs; 1 when the description has no epoch."""
    try:
        done, total = description.split()[-1].split("/")
        return int(done) / int(total)
    except ValueError:
        return 1.0


def brief(e: BaseException) -> str:
    """A one-line reason without note text: exception type and the innermost frame."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}{where}: {str(e)[:200]}"


__all__ = ["Job", "JobRunner", "summary", "tracker"]
