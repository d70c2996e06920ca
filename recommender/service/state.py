"""What the routers share, wired together: the served models, the predict path, the store, the
model versions, the retrainer."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi import Path as PathParam

from recommender.active.strategies import get_strategy
from recommender.cores import available_cores, core_budget, set_torch_threads
from recommender.errors import ModelError, NotFoundError, OverloadError
from recommender.model_versions import ModelVersions
from recommender.retraining import Job, Retrainer
from recommender.retraining.queue import JobQueue
from recommender.service.ahead import AheadWorker
from recommender.service.labelstudio_client import LabelStudioClient
from recommender.service.middleware import RequestStats
from recommender.service.predicting import PredictPath
from recommender.service.served import Predictor, ServedModels
from recommender.service.suggestion_log import Evidence
from recommender.settings import DEFAULT_MODEL, RecommenderConfig, Settings
from recommender.store import CorrectionStore
from recommender.store.predictions import PredictionCache

log = logging.getLogger(__name__)


class ComputeLanes:
    """Admits at most ``lanes`` model calls at once, each on ``cores // lanes`` intra-op threads, and
    shares them fairly between clients.

    On 2 cores two requests on one thread each serve more notes per second than one request on two
    threads (small matrices scale poorly across threads), and one request's Python work (XMI
    parsing) overlaps the other's model time. Threads are not shared out by how many calls run: a
    call that started alone on both cores and then shared them with a newcomer stalls at OpenMP
    barriers (INCEpTION p95 at 4 clients 0.69 s that way, 0.54 s with fixed threads). Torch's thread
    count is per calling thread, so the retrainer keeps its own.

    Sharing: a freed lane goes to the waiting client that holds the fewest lanes, and among its
    waiters to the longest one, so a newly arrived request cannot barge ahead and a client with many
    requests queued holds all lanes only while nobody else waits (for at most one model call, which
    the note length limit and the per-chunk calls keep short). ``per_client`` caps a client's lanes
    even then. A call that gets no lane within ``timeout`` raises OverloadError.
    """

    def __init__(self, lanes: int, cores: int | None = None, *, per_client: int | None = None) -> None:
        cores = cores or available_cores()
        self.lanes = lanes
        self.per_client = min(per_client or lanes, lanes)
        self.threads = max(1, cores // lanes)
        self.running = 0
        self.held: dict[str, int] = {}  # client -> lanes it holds
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._waiting: deque[tuple[str, threading.Event]] = deque()

    def _admit(self, client: str) -> None:
        self.running += 1
        self.held[client] = self.held.get(client, 0) + 1

    def _next_waiter(self) -> int | None:
        """Index of the waiter a free lane goes to: fewest lanes held, then longest waiting."""
        best: int | None = None
        for i, (client, _) in enumerate(self._waiting):
            held = self.held.get(client, 0)
            if held < self.per_client and (best is None or held < self.held.get(self._waiting[best][0], 0)):
                best = i
        return best

    @contextmanager
    def lane(self, client: str = "", timeout: float | None = None) -> Iterator[ComputeLanes]:
        """Hold a lane for ``client`` while the block runs; OverloadError when none frees in ``timeout``."""
        with self._lock:
            turn = None
            if self.running < self.lanes and self.held.get(client, 0) < self.per_client:
                self._admit(client)  # a free lane means no waiter could take it
            else:
                turn = threading.Event()
                self._waiting.append((client, turn))
        if turn is not None and not turn.wait(timeout):
            with self._lock:
                if not turn.is_set():  # else the lane was handed over just now: take it
                    self._waiting.remove((client, turn))
                    raise OverloadError(
                        f"no compute lane came free within [{timeout:.0f}] s "
                        f"({self.lanes} lane(s), {len(self._waiting)} call(s) waiting); retry later"
                    )
        set_torch_threads(self.threads)
        try:
            yield self
        finally:
            self._release(client)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no model call runs or waits (False when ``timeout`` passed first): how the
        background worker lets requests go first."""
        with self._lock:
            return self._idle.wait_for(lambda: not self.running and not self._waiting, timeout)

    def _release(self, client: str) -> None:
        with self._lock:
            self.running -= 1
            self.held[client] -= 1
            if not self.held[client]:
                del self.held[client]
            if (i := self._next_waiter()) is not None:
                waiter, turn = self._waiting[i]
                del self._waiting[i]
                self._admit(waiter)  # counted before it wakes, so no newcomer takes this lane
                turn.set()
            elif not self.running and not self._waiting:
                self._idle.notify_all()


class Service:
    """One per app; built by ``create_app`` and reached from handlers through ``ServiceDep``."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: CorrectionStore,
        model_versions: ModelVersions,
        retrainer: Retrainer | JobQueue | None,
        labelstudio: LabelStudioClient | None,
    ) -> None:
        self.settings = settings
        self.strategy = get_strategy(settings.al_strategy)  # scores the tools order and show
        self.served_models = ServedModels(Predictor(DEFAULT_MODEL, settings.extractor_overrides()))
        self.predictor = self.served_models.main
        self.models = self.served_models.by_name  # Settings.serve_models too
        self.store = store
        self.model_versions = model_versions
        self.retrainer: Retrainer | JobQueue | None = retrainer
        self.labelstudio = labelstudio
        self.stats = RequestStats()
        self.cores = core_budget(settings)
        self.compute = ComputeLanes(
            self.cores.lanes, self.cores.threads, per_client=settings.max_lanes_per_client
        )
        cache = PredictionCache(store.engine)
        self.predicting = PredictPath(settings, self.served_models, self.compute, cache, self.strategy)
        self.ahead = AheadWorker(self.predicting, threads=self.cores.precompute_threads)
        self.evidence = Evidence(settings, store.engine)  # the suggestion log
        self._seen_unservable: set[str] = set()
        self._raw_seen: dict[tuple[str, str, str], str] = {}
        self._raw_lock = threading.Lock()

    def deadline(self) -> float:
        """When a prediction starting now must be done (``time.monotonic()``)."""
        return self.predicting.deadline()

    def model_call(self, client: str, deadline: float) -> AbstractContextManager[ComputeLanes]:
        """A compute lane for ``client``, waiting no later than ``deadline``."""
        return self.predicting.model_call(client, deadline)

    def add_model(self, name: str, path: Path) -> Predictor:
        """Serve the model folder ``path`` as ``name`` beside the main one (not retrained)."""
        return self.served_models.add(name, path, self.settings.extractor_overrides())

    def slow_models(self) -> list[Predictor]:
        """The served models whose predictions come from the prediction cache (``Extractor.ahead``)."""
        return self.served_models.slow()

    def served(self, name: str | None) -> Predictor:
        """The predictor of a served model by name; None is the main one."""
        return self.served_models.get(name)

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

    def model_info(self, name: str | None = None) -> dict[str, Any]:
        """What the served model ``name`` (None: the main one) is."""
        predictor = self.served(name)
        try:
            extractor = predictor.current
        except ModelError:
            return {"version": None, "extractor": None, "path": None}
        return {
            "version": extractor.version,
            "extractor": extractor.info.extractor,
            "path": str(predictor.path) if predictor.path else None,
        }

    def models_info(self) -> dict[str, dict[str, Any]]:
        """Every served model with the URL paths that reach it."""
        out = {}
        for name in sorted(self.models):
            prefix = "" if name == DEFAULT_MODEL else f"/{name}"
            out[name] = self.model_info(name) | {
                "inception": [f"/inception{prefix}/{rec}" for rec in sorted(self.settings.recommenders)],
                "labelstudio": f"/labelstudio/{name}" if prefix else "/",
            }
        return out


def client_of(request: Request) -> str:
    """Who is asking, for sharing the compute lanes: the peer address."""
    return request.client.host if request.client is not None else "unknown"


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def get_predictor(request: Request) -> Predictor:
    """The model a request is for: the ``{model}`` of its path, else the main one."""
    return get_service(request).served(request.path_params.get("model"))


PredictorDep = Annotated[Predictor, Depends(get_predictor)]


def model_path(
    model: Annotated[str, PathParam(description="a served model: default, or a name of KIWI_SERVE_MODELS")],
) -> str:
    """Declares ``{model}`` in the OpenAPI schema of the routes that have it (get_predictor reads it)."""
    return model


MODEL_PATH = [Depends(model_path)]

__all__ = [
    "MODEL_PATH",
    "ComputeLanes",
    "Predictor",
    "PredictorDep",
    "Service",
    "ServiceDep",
    "client_of",
    "get_predictor",
    "get_service",
]
