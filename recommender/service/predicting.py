"""The one predict path: documents in, predictions out, for any served model and any protocol.

``PredictPath.predict`` is what both protocol adapters call once, between decoding a request with
their format module and encoding the answer with it. It owns:

- the compute lanes and the deadline: a batch runs in chunks of ``CHUNK`` notes, each chunk on a lane
  of its own (so other clients' requests run between the chunks of a big batch), and stops at the
  deadline (the first chunk always runs, or its lane wait raises OverloadError);
- cache or compute: a slow model (``Extractor.ahead``, a LLaMA) served with a fast fallback model
  never generates in a request; it answers from the prediction cache (the ``predictions`` table), and
  a miss is queued and answered within ``miss_budget_seconds`` by the fallback model
  (``KIWI_FALLBACK_MODEL``), under the version ``FAST (fallback for SLOW)`` and the explanation
  ``... (fallback: SLOW queued)``. The fallback's own prediction comes from the cache when it was
  computed ahead, else it is computed and cached after the answer (one writer thread: a durable
  commit per note would queue concurrent misses on it);
- rescoring for active learning: every answer gets the scores ``KIWI_AL_STRATEGY`` gives it.

The background worker (``service/ahead.py``) computes queued notes through ``compute_ahead``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol

from recommender.active.strategies import Strategy, rescore
from recommender.document import Document
from recommender.errors import LimitError, OverloadError, UnavailableError
from recommender.extractors.base import Extractor
from recommender.service.served import Predictor, ServedModels
from recommender.settings import Settings
from recommender.store.predictions import Entry, Kind, PredictionCache, input_hash

log = logging.getLogger(__name__)

CHUNK = 8  # notes per model call in a batch: large enough for the encoder to batch them


class Lanes(Protocol):
    """The compute lanes model calls take (``state.ComputeLanes``)."""

    def lane(self, client: str = "", timeout: float | None = None) -> AbstractContextManager[Any]: ...

    def wait_idle(self, timeout: float) -> bool: ...


@dataclass(frozen=True)
class Prediction:
    """A prediction for one note and how to label it."""

    document: Document
    version: str  # model version shown to the annotator
    explanation: str  # score explanation: which model answered, and why
    fallback: bool


def explanation(extractor: Extractor) -> str:
    """The score explanation of an answer by ``extractor``: its family and version."""
    return f"{extractor.info.extractor} {extractor.version}"


class PredictPath:
    """Cache or compute, the fallback, compute lanes and deadlines, and rescoring, for every adapter."""

    def __init__(
        self,
        settings: Settings,
        models: ServedModels,
        lanes: Lanes,
        cache: PredictionCache,
        strategy: Strategy,
    ) -> None:
        self.settings = settings
        self.models = models
        self.lanes = lanes
        self.cache = cache
        self.strategy = strategy
        self.queued = threading.Event()  # set when notes are queued: wakes the worker (service/ahead.py)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="kiwi-fallback-cache")

    # --- limits ----------------------------------------------------------------------------------
    def deadline(self) -> float:
        """When a prediction starting now must be done (``time.monotonic()``)."""
        return time.monotonic() + self.settings.predict_budget_seconds

    def model_call(self, client: str, deadline: float) -> AbstractContextManager[Any]:
        """A compute lane for ``client``, waiting no later than ``deadline``."""
        return self.lanes.lane(client, timeout=max(0.0, deadline - time.monotonic()))

    def check_note(self, text: str, where: str) -> None:
        """LimitError for a note too long to predict on within a request."""
        limit = self.settings.max_note_chars
        if len(text) > limit:
            raise LimitError(
                f"note [{where}] has {len(text)} characters, over the limit of [{limit}] "
                "(KIWI_MAX_NOTE_CHARS); pre-annotate long notes in batch with "
                "`kiwi predict --model DIR NOTES OUT` and import the result"
            )

    # --- the request path ------------------------------------------------------------------------
    def predict(
        self,
        predictor: Predictor,
        docs: Sequence[Document],
        *,
        entities_given: bool = False,
        client: str = "",
        deadline: float | None = None,
        keep: Callable[[Document], Document] | None = None,
    ) -> list[Prediction]:
        """Predictions by ``predictor``'s model for a prefix of ``docs`` (all of them unless the
        deadline passed first: the tools ask again for the rest), rescored by the strategy.

        ``keep`` narrows each predicted document before it is scored (the labels a Label Studio
        project offers: the task score is over what the annotator sees). UnavailableError for a miss
        of a slow model when no fallback model can answer; OverloadError when no lane came free."""
        until = self.deadline() if deadline is None else deadline
        extractor = predictor.current
        if self.cached(predictor):
            answers = self._cached_or_fallback(predictor, extractor, docs, entities_given, client, until)
        else:
            label = explanation(extractor)
            computed = self._compute(extractor, list(docs), entities_given, client, until)
            answers = [Prediction(d, extractor.version, label, False) for d in computed]
        return [
            replace(a, document=rescore(keep(a.document) if keep else a.document, self.strategy))
            for a in answers
        ]

    def _compute(
        self, extractor: Extractor, docs: list[Document], entities_given: bool, client: str, deadline: float
    ) -> list[Document]:
        """``extractor``'s predictions for a prefix of ``docs``, chunk by chunk, each on a lane."""
        out: list[Document] = []
        for k in range(0, len(docs), CHUNK):
            if k and time.monotonic() > deadline:
                log.warning(
                    "predict: time budget of %.0f s spent after %d of %d task(s); answering those",
                    self.settings.predict_budget_seconds,
                    k,
                    len(docs),
                )
                break
            try:
                # Only the model call takes a lane: decoding and encoding are done outside it.
                with self.model_call(client, deadline):
                    out += extractor.predict(docs[k : k + CHUNK], entities_given=entities_given)
            except OverloadError:
                if not k:
                    raise
                break
        return out

    # --- slow models: the prediction cache and the fallback ------------------------------------------
    def cached(self, predictor: Predictor) -> bool:
        """Whether ``predictor``'s answers come from the cache: a slow model with a fast fallback model
        to answer misses. A slow model served alone predicts in its requests, as any other (a LLaMA
        behind a GPU server answers in about a second)."""
        extractor = predictor.loaded
        return extractor is not None and extractor.ahead and self.fallback_for(predictor) is not None

    def fallback_for(self, predictor: Predictor) -> Predictor | None:
        """The fast model that answers ``predictor``'s misses, if one is served."""
        fast = self.models.get(self.settings.fallback_model)
        if fast is predictor or fast.loaded is None or fast.loaded.ahead:
            return None
        return fast

    def _cached_or_fallback(
        self,
        predictor: Predictor,
        slow: Extractor,
        docs: Sequence[Document],
        entities_given: bool,
        client: str,
        deadline: float,
    ) -> list[Prediction]:
        kind: Kind = "given" if entities_given else "text"
        version = slow.version
        hashes = [input_hash(d, kind) for d in docs]
        entries = self.cache.lookup(version, kind, hashes)
        missing = [d for d, h in zip(docs, hashes, strict=True) if h not in entries]
        if missing:
            self.cache.enqueue(predictor.name, version, kind, missing)
            self.queued.set()
        misses = [
            d for d, h in zip(docs, hashes, strict=True) if h not in entries or entries[h].state != "done"
        ]
        fallback: dict[str, Prediction] = {}
        if misses:
            states = {
                d.id: entries[h].state if h in entries else "queued"
                for d, h in zip(docs, hashes, strict=True)
            }
            fallback = self._fallback(predictor, slow, misses, states, kind, client, deadline)
        out = []
        for doc, digest in zip(docs, hashes, strict=True):
            entry = entries.get(digest)
            if entry is not None and entry.document is not None and entry.state == "done":
                # Same version and same input hash: the prediction of this very note by this model.
                out.append(Prediction(replace(entry.document, id=doc.id), version, explanation(slow), False))
            elif doc.id in fallback:
                out.append(fallback[doc.id])
            else:
                break  # past the budget: the tools ask again for the rest
        return out

    def _fallback(
        self,
        predictor: Predictor,
        slow: Extractor,
        misses: list[Document],
        states: dict[str, str],
        kind: Kind,
        client: str,
        deadline: float,
    ) -> dict[str, Prediction]:
        fast_predictor = self.fallback_for(predictor)
        fast = fast_predictor.loaded if fast_predictor is not None else None
        if fast_predictor is None or fast is None:
            raise UnavailableError(
                f"the prediction of [{slow.version}] for this note is queued and no fast model answers "
                f"meanwhile (KIWI_FALLBACK_MODEL [{self.settings.fallback_model}]); retry later"
            )
        budget = min(deadline, time.monotonic() + self.settings.miss_budget_seconds)
        predicted = self._fast_predictions(fast_predictor.name, fast, misses, kind, client, budget)
        return {
            p.id: Prediction(
                p,
                f"{fast.version} (fallback for {slow.version})",
                f"{explanation(fast)} (fallback: {slow.version} {_why(states[p.id])})",
                True,
            )
            for p in predicted
        }

    def _fast_predictions(
        self, name: str, fast: Extractor, misses: list[Document], kind: Kind, client: str, budget: float
    ) -> list[Document]:
        """The fast model's predictions for a prefix of ``misses``: cached (computed ahead), else
        computed now within ``budget`` and cached for the next ask."""
        hashes = [input_hash(d, kind) for d in misses]
        entries: dict[str, Entry] = self.cache.lookup(fast.version, kind, hashes)
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
        computed = self._compute(fast, live, kind == "given", client, budget)
        # Written after the answer: a durable commit per note would queue concurrent misses on it.
        pairs = list(zip(live, computed, strict=False))
        with contextlib.suppress(RuntimeError):  # shutting down: not cached, answered all the same
            self._writer.submit(self._cache_fallbacks, name, fast.version, kind, pairs)
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
        fast = self.fallback_for(predictor)
        new_fast = self.cache.enqueue(fast.name, fast.current.version, kind, docs) if fast is not None else 0
        if n or new_fast:
            self.queued.set()
        return n

    def computed_ahead(self) -> list[Predictor]:
        """The models the background worker computes for: the fallback models of the slow ones
        (fast: done first), then the slow models."""
        slow = self.models.slow()
        fast = [f for p in slow if (f := self.fallback_for(p)) is not None]
        return list(dict.fromkeys([*fast, *slow]))

    # --- the background worker's model call -----------------------------------------------------------
    def compute_ahead(
        self,
        predictor: Predictor,
        extractor: Extractor,
        doc: Document,
        kind: Kind,
        between_steps: Callable[[], None],
    ) -> Document:
        """The prediction of a queued note by ``extractor`` (``predictor``'s model), for the cache.
        A slow model whose requests never run it (answered from the cache) calls ``between_steps``
        between two generation steps, where the worker waits while requests run; any other runs
        straight through (else its own requests would wait on it)."""
        [predicted] = extractor.predict_in_background(
            [doc],
            entities_given=kind == "given",
            between_steps=between_steps if self.cached(predictor) else None,
        )
        return predicted

    def close(self) -> None:
        """Finish the pending cache writes (a few quick inserts at most)."""
        self._writer.shutdown(wait=True)


def _why(state: str) -> str:
    return "failed" if state == "failed" else "queued"


__all__ = ["CHUNK", "Lanes", "PredictPath", "Prediction", "explanation"]
