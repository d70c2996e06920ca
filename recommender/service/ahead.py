"""Predictions ahead of the annotator for slow models (``Extractor.ahead``: a LLaMA).

A predict request for a slow model never generates: it answers from the prediction cache (the
``predictions`` table). On a miss it answers within ``miss_budget_seconds`` with the fallback model's
(``KIWI_FALLBACK_MODEL``, the encoder) prediction, marked in the model version and the score
explanation, and queues the note. Notes imported ahead of the annotator (Label Studio's
``TASKS_CREATED``) are queued for the fallback model too, so a miss on an imported note is answered
from the cache as well; a fallback computed in a request is cached for the next ask.

A background worker computes queued notes one at a time (the fallback model's first) at a lower CPU
priority than requests, and between two generation steps waits while requests run (they share its
cores: a step is a forward pass, tens of milliseconds, where a note takes tens of seconds). It
retries a failure up to ``precompute_attempts`` times and then reports it failed (a failed note keeps
getting the fallback, never an empty prediction). When a model's version changes (a retrained
adapter), the notes its predecessor had are queued for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from recommender.cores import set_torch_threads
from recommender.document import Document
from recommender.errors import KiwiError, UnavailableError
from recommender.extractors.base import Extractor
from recommender.store.predictions import Kind, PredictionCache, input_hash

if TYPE_CHECKING:
    from recommender.service.state import Predictor, Service

log = logging.getLogger(__name__)

# (extractor, docs, entities_given, deadline) -> predictions for a prefix of docs (all unless the
# deadline passed first): how a protocol adapter runs the fallback model under its compute lanes.
RunModel = Callable[[Extractor, list[Document], bool, float], list[Document]]

_STALL_CHECK_SECONDS = 30.0
# The longest the worker waits between two generation steps for requests to finish, so queued notes
# still progress (one step each time) under a constant stream of requests.
_MAX_YIELD_SECONDS = 5.0


@dataclass(frozen=True)
class Answer:
    """A prediction for one note and how to label it."""

    document: Document
    version: str  # model version shown to the annotator
    explanation: str  # score explanation: which model answered, and why
    fallback: bool


def explanation(extractor: Extractor) -> str:
    return f"{extractor.info.extractor} {extractor.version}"


class AheadPredictions:
    """The cache-backed predictions of a service's slow models and their background worker."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.cache = PredictionCache(service.store.engine)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._versions: dict[str, str] = {}  # model name -> version the worker last carried over to
        self._heartbeat = 0.0  # when the worker last marked its paused row alive
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="kiwi-fallback-cache")

    # --- the request path ------------------------------------------------------------------------
    def predict(
        self,
        predictor: Predictor,
        docs: Sequence[Document],
        kind: Kind,
        run: RunModel,
        deadline: float,
    ) -> list[Answer]:
        """Answers for a prefix of ``docs``: cached ones of ``predictor``'s slow model, the fallback
        model's for the rest (all of them unless the budget ran out). UnavailableError for a miss
        when no fallback model can answer."""
        extractor = predictor.current
        version = extractor.version
        hashes = [input_hash(d, kind) for d in docs]
        entries = self.cache.lookup(version, kind, hashes)
        missing = [d for d, h in zip(docs, hashes, strict=True) if h not in entries]
        if missing:
            self.cache.enqueue(predictor.name, version, kind, missing)
            self._wake.set()
        misses = [
            d for d, h in zip(docs, hashes, strict=True) if h not in entries or entries[h].state != "done"
        ]
        fallback: dict[str, Answer] = {}
        if misses:
            fallback = self._fallback(
                predictor, extractor, misses, entries, hashes, docs, kind, run, deadline
            )
        out = []
        for doc, digest in zip(docs, hashes, strict=True):
            entry = entries.get(digest)
            if entry is not None and entry.document is not None and entry.state == "done":
                # Same version and same input hash: the prediction of this very note by this model.
                out.append(Answer(replace(entry.document, id=doc.id), version, explanation(extractor), False))
            elif doc.id in fallback:
                out.append(fallback[doc.id])
            else:
                break  # past the budget: the tools ask again for the rest
        return out

    def applies(self, predictor: Predictor) -> bool:
        """Whether ``predictor``'s answers come from the cache: a slow model with a fast fallback model
        to answer misses. A slow model served alone predicts in its requests, as any other (a LLaMA
        behind a GPU server answers in about a second)."""
        extractor = predictor.loaded
        return extractor is not None and extractor.ahead and self._fast(predictor) is not None

    def _fast(self, predictor: Predictor) -> Predictor | None:
        """The fast model that answers ``predictor``'s misses, if one is served."""
        fast = self.service.served(self.service.settings.fallback_model)
        if fast is predictor or fast.loaded is None or fast.loaded.ahead:
            return None
        return fast

    def _fallback(
        self,
        predictor: Predictor,
        slow: Extractor,
        misses: list[Document],
        entries: dict[str, Any],
        hashes: list[str],
        docs: Sequence[Document],
        kind: Kind,
        run: RunModel,
        deadline: float,
    ) -> dict[str, Answer]:
        settings = self.service.settings
        fast_predictor = self.service.served(settings.fallback_model)
        fast = fast_predictor.loaded if fast_predictor is not predictor else None
        if fast is None or fast.ahead:
            raise UnavailableError(
                f"the prediction of [{slow.version}] for this note is queued and no fast model answers "
                f"meanwhile (KIWI_FALLBACK_MODEL [{settings.fallback_model}]); retry later"
            )
        budget = min(deadline, time.monotonic() + settings.miss_budget_seconds)
        predicted = self._fast_predictions(fast_predictor, fast, misses, kind, run, budget)
        state = {
            d.id: entries[h].state if h in entries else "queued" for d, h in zip(docs, hashes, strict=True)
        }
        return {
            p.id: Answer(
                p,
                f"{fast.version} (fallback for {slow.version})",
                f"{explanation(fast)} (fallback: {slow.version} {_why(state[p.id])})",
                True,
            )
            for p in predicted
        }

    def _fast_predictions(
        self,
        fast_predictor: Predictor,
        fast: Extractor,
        misses: list[Document],
        kind: Kind,
        run: RunModel,
        budget: float,
    ) -> list[Document]:
        """The fast model's predictions for a prefix of ``misses``: cached (computed ahead), else
        computed now within ``budget`` and cached for the next ask."""
        hashes = [input_hash(d, kind) for d in misses]
        entries = self.cache.lookup(fast.version, kind, hashes)
        out: list[Document] = []
        live: list[Document] = []
        for doc, digest in zip(misses, hashes, strict=True):
            entry = entries.get(digest)
            if entry is not None and entry.state == "done" and entry.document is not None:
                out.append(replace(entry.document, id=doc.id))
            else:
                live.append(doc)
        if not live:
            return out
        computed = run(fast, live, kind == "given", budget)
        # Written after the answer: a durable commit per note would queue concurrent misses on it.
        pairs = list(zip(live, computed, strict=False))
        with contextlib.suppress(RuntimeError):  # shutting down: not cached, answered all the same
            self._writer.submit(self._cache_fallbacks, fast_predictor.name, fast.version, kind, pairs)
        by_id = {p.id: p for p in [*out, *computed]}
        return [by_id[d.id] for d in misses if d.id in by_id]

    def _cache_fallbacks(
        self, name: str, version: str, kind: Kind, pairs: list[tuple[Document, Document]]
    ) -> None:
        try:
            for doc, predicted in pairs:
                self.cache.put(name, version, kind, doc, predicted)
        except UnavailableError:  # answered all the same; the next ask computes it again
            log.warning("precompute [%s]: fallback predictions not cached (database unavailable)", name)

    def queue(self, predictor: Predictor, docs: Sequence[Document], kind: Kind = "text") -> int:
        """Queue ``docs`` for ``predictor``'s slow model (not done yet) and for its fallback model;
        returns how many were new for the slow model."""
        n = self.cache.enqueue(predictor.name, predictor.current.version, kind, docs)
        fast = self._fast(predictor)
        new_fast = self.cache.enqueue(fast.name, fast.current.version, kind, docs) if fast is not None else 0
        if n or new_fast:
            self._wake.set()
        return n

    def status(self) -> dict[str, dict[str, Any]]:
        """Per model the worker computes for: its version and how many notes are queued, running,
        done and failed."""
        out = {}
        for predictor in self._worked():
            version = predictor.current.version
            out[predictor.name] = {"version": version, **self.cache.counts(predictor.name, version)}
        return out

    def _worked(self) -> list[Predictor]:
        """The fallback models of the slow ones (fast: done first), then the slow models."""
        slow = self.service.slow_models()
        fast = [f for p in slow if (f := self._fast(p)) is not None]
        return list(dict.fromkeys([*fast, *slow]))

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
        self._writer.shutdown(wait=True)  # a few quick inserts at most
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _work(self) -> None:
        _lower_priority()
        set_torch_threads(self.service.cores.precompute_threads)
        settings = self.service.settings
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
        settings = self.service.settings
        for predictor in self._worked():
            name, extractor = predictor.name, predictor.current
            if self._versions.get(name) != extractor.version:
                self._versions[name] = extractor.version
                carried = self.cache.carry_over(name, extractor.version)
                if carried:
                    log.info("precompute [%s]: queued %d note(s) for [%s]", name, carried, extractor.version)
            for claimed in self.cache.claim(name, extractor.version):
                started = time.monotonic()
                # Only slow models whose requests never run them (else those would wait on it).
                yielding = partial(self._yield_to_requests, claimed.id) if self.applies(predictor) else None
                try:
                    [predicted] = extractor.predict_in_background(
                        [claimed.document], entities_given=claimed.kind == "given", between_steps=yielding
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
        compute = self.service.compute
        if compute.wait_idle(0.0) or self._stop.is_set():
            return
        compute.wait_idle(_MAX_YIELD_SECONDS)
        now = time.monotonic()
        if now - self._heartbeat > _STALL_CHECK_SECONDS:  # paused, not stalled: keep the row running
            self._heartbeat = now
            with contextlib.suppress(UnavailableError):
                self.cache.heartbeat(row_id)


def _why(state: str) -> str:
    return "failed" if state == "failed" else "queued"


def _lower_priority() -> None:
    """Requests first: this thread (and the threads it starts) runs 10 nice levels below the
    process. Linux only."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))


__all__ = ["AheadPredictions", "Answer", "RunModel", "explanation"]
