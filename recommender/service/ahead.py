"""The background worker that computes predictions ahead of the annotator for slow models
(``Extractor.ahead``: a LLaMA), into the prediction cache the predict path answers from
(``service/predicting.py``).

It computes queued notes one at a time (the fallback model's first) through
``PredictPath.compute_ahead``, at a lower CPU priority than requests, and between two generation steps
waits while requests run (they share its cores: a step is a forward pass, tens of milliseconds, where
a note takes tens of seconds). It retries a failure up to ``precompute_attempts`` times and then
reports it failed (a failed note keeps getting the fallback, never an empty prediction). When a
model's version changes (a retrained adapter), the notes its predecessor had are queued for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from functools import partial
from typing import Any

from recommender.cores import set_torch_threads
from recommender.errors import KiwiError, UnavailableError
from recommender.service.predicting import PredictPath

log = logging.getLogger(__name__)

_STALL_CHECK_SECONDS = 30.0
# The longest the worker waits between two generation steps for requests to finish, so queued notes
# still progress (one step each time) under a constant stream of requests.
_MAX_YIELD_SECONDS = 5.0


class AheadWorker:
    """Computes the queued predictions of a service's slow models and their fallback models."""

    def __init__(self, path: PredictPath, *, threads: int) -> None:
        self.path = path
        self.threads = threads  # torch threads of the worker (``CoreBudget.precompute_threads``)
        self.cache = path.cache
        self.settings = path.settings
        self._wake = path.queued
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._versions: dict[str, str] = {}  # model name -> version the worker last carried over to
        self._heartbeat = 0.0  # when the worker last marked its paused row alive

    def status(self) -> dict[str, dict[str, Any]]:
        """Per model the worker computes for: its version and how many notes are queued, running,
        done and failed."""
        out = {}
        for predictor in self.path.computed_ahead():
            version = predictor.current.version
            out[predictor.name] = {"version": version, **self.cache.counts(predictor.name, version)}
        return out

    # --- the background worker -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="kiwi-precompute", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop after the prediction in progress (a generation cannot be interrupted: its row is
        retried by the stall check once ``precompute_timeout_seconds`` have passed)."""
        self._stop.set()
        self._wake.set()
        self.path.close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _work(self) -> None:
        _lower_priority()
        set_torch_threads(self.threads)
        settings = self.settings
        last_stall_check = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_stall_check > _STALL_CHECK_SECONDS:
                    last_stall_check = time.monotonic()
                    self.cache.requeue_stalled(
                        settings.precompute_timeout_seconds, settings.precompute_attempts
                    )
                busy = self.step()
            except Exception as e:  # the worker must outlive a database outage
                log.warning("precompute worker: %s", type(e).__name__)
                busy = False
            if not busy:
                self._wake.wait(1.0)
                self._wake.clear()

    def step(self) -> bool:
        """Compute one queued prediction (a fallback model's first); False when none was queued."""
        settings = self.settings
        for predictor in self.path.computed_ahead():
            name, extractor = predictor.name, predictor.current
            if self._versions.get(name) != extractor.version:
                self._versions[name] = extractor.version
                carried = self.cache.carry_over(name, extractor.version)
                if carried:
                    log.info("precompute [%s]: queued %d note(s) for [%s]", name, carried, extractor.version)
            for claimed in self.cache.claim(name, extractor.version):
                started = time.monotonic()
                try:
                    yielding = partial(self._yield_to_requests, claimed.id)
                    predicted = self.path.compute_ahead(
                        predictor, extractor, claimed.document, claimed.kind, yielding
                    )
                except Exception as e:  # any engine failure (server down, timeout, out of memory)
                    reason = f"{type(e).__name__}: {e}" if isinstance(e, KiwiError) else type(e).__name__
                    state = self.cache.fail(claimed.id, reason, settings.precompute_attempts)
                    log.warning(
                        "precompute [%s]: prediction %d, attempt %d failed (%s); %s",
                        name,
                        claimed.id,
                        claimed.attempts,
                        type(e).__name__,
                        "retrying" if state == "queued" else "reported failed",
                    )
                    continue
                self.cache.finish(claimed.id, predicted)
                log.info(
                    "precompute [%s]: prediction %d done in %.1f s (%d span(s))",
                    name,
                    claimed.id,
                    time.monotonic() - started,
                    len(predicted.spans),
                )
                return True
        return False

    def _yield_to_requests(self, row_id: int) -> None:
        compute = self.path.lanes
        if compute.wait_idle(0.0) or self._stop.is_set():
            return
        compute.wait_idle(_MAX_YIELD_SECONDS)
        now = time.monotonic()
        if now - self._heartbeat > _STALL_CHECK_SECONDS:  # paused, not stalled: keep the row running
            self._heartbeat = now
            with contextlib.suppress(UnavailableError):
                self.cache.heartbeat(row_id)


def _lower_priority() -> None:
    """Requests first: this thread (and the threads it starts) runs 10 nice levels below the
    process. Linux only."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))


__all__ = ["AheadWorker"]
