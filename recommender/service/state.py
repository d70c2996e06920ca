"""What the routers share: the predictor (the served model), the store, the registry, the retrainer."""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from recommender.errors import ModelError, NotFoundError
from recommender.extractors import load_extractor
from recommender.extractors.base import Extractor
from recommender.registry import ModelRegistry
from recommender.retraining import Job, Retrainer
from recommender.service.labelstudio_client import LabelStudioClient
from recommender.service.middleware import RequestStats
from recommender.settings import RecommenderConfig, Settings
from recommender.store import CorrectionStore

log = logging.getLogger(__name__)


class Predictor:
    """The served extractor. ``load`` builds the new model first and then swaps one reference, so a
    request that already took ``current`` finishes on the model it started with."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._extractor: Extractor | None = None
        self.path: Path | None = None

    @property
    def current(self) -> Extractor:
        extractor = self._extractor
        if extractor is None:
            raise ModelError(
                "no model is loaded: start with `kiwi serve --bootstrap` or `--model DIR`, "
                "or promote a version with `kiwi models promote`"
            )
        return extractor

    @property
    def version(self) -> str | None:
        extractor = self._extractor
        return extractor.version if extractor is not None else None

    def load(self, path: Path) -> Extractor:
        extractor = load_extractor(path)  # slow part outside the lock
        with self._lock:
            self._extractor, self.path = extractor, Path(path)
        # The model, its tokenizer and the libraries are hundreds of thousands of objects that live
        # as long as the process: a full garbage collection traversing them stalled requests by
        # ~0.25 s (the 95th-percentile latency). Frozen objects are skipped by the collector.
        gc.collect()
        gc.freeze()
        log.info("serving model [%s] from [%s]", extractor.version, path)
        return extractor


class ComputeLanes:
    """Admits at most ``lanes`` model calls at once, first come first served, each on
    ``cores // lanes`` intra-op threads.

    On 2 cores two requests on one thread each serve more notes per second than one request on two
    threads (small matrices scale poorly across threads), and one request's Python work (XMI
    parsing) overlaps the other's model time. Threads are not shared out by how many calls run: a
    call that started alone on both cores and then shared them with a newcomer stalls at OpenMP
    barriers (INCEpTION p95 at 4 clients 0.69 s that way, 0.54 s with fixed threads). Torch's thread
    count is per calling thread, so the retrainer keeps its own. A freed lane is handed to the
    longest waiter, so a newly arrived request cannot barge ahead.
    """

    def __init__(self, lanes: int, cores: int | None = None) -> None:
        try:
            import torch
        except ImportError:  # extractors without torch need no thread setting
            torch = None
        self._torch = torch
        # torch's default honours OMP_NUM_THREADS and counts physical cores
        cores = cores or (torch.get_num_threads() if torch else os.cpu_count() or 1)
        self.lanes = lanes
        self.threads = max(1, cores // lanes)
        self.running = 0
        self._lock = threading.Lock()
        self._waiting: deque[threading.Event] = deque()

    def __enter__(self) -> ComputeLanes:
        """Waits for a lane."""
        with self._lock:
            turn = None
            if self.running < self.lanes and not self._waiting:
                self.running += 1
            else:
                turn = threading.Event()
                self._waiting.append(turn)
        if turn is not None:
            turn.wait()  # the releasing call passed its lane on: running already counts this one
        if self._torch is not None and self._torch.get_num_threads() != self.threads:
            self._torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self.running -= 1


class Service:
    """One per app; built by ``create_app`` and reached from handlers through ``ServiceDep``."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: CorrectionStore,
        registry: ModelRegistry,
        retrainer: Retrainer | None,
        labelstudio: LabelStudioClient | None,
    ) -> None:
        self.settings = settings
        self.predictor = Predictor()
        self.store = store
        self.registry = registry
        self.retrainer = retrainer
        self.labelstudio = labelstudio
        self.stats = RequestStats()
        self.compute = ComputeLanes(settings.predict_lanes)
        self._seen_unservable: set[str] = set()
        self._raw_seen: dict[tuple[str, str, str], str] = {}
        self._raw_lock = threading.Lock()

    def recommender(self, name: str) -> RecommenderConfig:
        try:
            return self.settings.recommenders[name]
        except KeyError:
            known = ", ".join(sorted(self.settings.recommenders))
            raise NotFoundError(f"no recommender [{name}]; configured: {known}") from None

    def on_promote(self, path: Path) -> None:
        self.predictor.load(path)

    def request_training(self, project: str, reason: str) -> Job | None:
        """Queue a retraining job; None when the worker is off. BusyError while one runs for ``project``."""
        if self.retrainer is None:
            return None
        return self.retrainer.request(project, reason)

    def training_busy(self, project: str) -> bool:
        return self.retrainer is not None and self.retrainer.busy(project)

    def notify_corrections(self, project: str, n: int) -> None:
        if self.retrainer is not None and n > 0:
            self.retrainer.notify_new_corrections(project, n)

    def first_time(self, key: str) -> bool:
        """True once per key: repeated misconfigurations log one warning, not one per request."""
        if key in self._seen_unservable:
            return False
        self._seen_unservable.add(key)
        return True

    def unchanged_resend(self, key: tuple[str, str, str], digest: str) -> bool:
        """Whether the raw document ``key`` was last seen with ``digest`` (then parsing can be skipped);
        records ``digest`` otherwise. The store deduplicates anyway; this only saves the XMI parsing
        of INCEpTION's full resends."""
        with self._raw_lock:
            if self._raw_seen.get(key) == digest:
                return True
            if len(self._raw_seen) > 100_000:
                self._raw_seen.clear()
            self._raw_seen[key] = digest
            return False

    def model_info(self) -> dict[str, Any]:
        try:
            extractor = self.predictor.current
        except ModelError:
            return {"version": None, "extractor": None, "path": None}
        return {
            "version": extractor.version,
            "extractor": extractor.info.extractor,
            "path": str(self.predictor.path) if self.predictor.path else None,
        }


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]

__all__ = ["Predictor", "Service", "ServiceDep", "get_service"]
