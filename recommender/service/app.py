"""``create_app(settings)``: the FastAPI application behind ``kiwi serve``.

The served model is ``settings.model`` when given, else the promoted model version; a promotion
(by the retraining loop, the API, a trainer or ``kiwi models promote`` in another process, seen by
polling the promoted pointer every ``registry_poll_seconds``) swaps it without a restart or a dropped request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from recommender import __version__
from recommender.errors import ConfigError
from recommender.model_versions import ModelVersions
from recommender.retraining import Corpora, Retrainer, Trainer
from recommender.retraining.queue import JobQueue
from recommender.service import admin, http_errors, inception_recommender, labelstudio_backend, reports
from recommender.service.labelstudio_client import LabelStudioClient
from recommender.service.middleware import (
    AuthMiddleware,
    CatchAllMiddleware,
    SizeLimitMiddleware,
    StatsMiddleware,
)
from recommender.service.state import Service
from recommender.settings import Settings, load_settings
from recommender.store import CorrectionStore
from recommender.store.database import is_postgres

log = logging.getLogger(__name__)


def build_service(
    settings: Settings, *, corpora: Corpora | None = None, trainer: Trainer | None = None
) -> Service:
    """The store, model versions, scheduler and the model to serve, as ``settings`` say.

    On SQLite the in-process retrainer runs in ``--role all``; an API-only replica there only stores
    corrections. On PostgreSQL jobs go through the job library: every role queues them, and ``all``
    also runs a trainer in a background thread."""
    if settings.role == "trainer":
        raise ConfigError("the trainer role serves no requests: run `kiwi serve --role trainer`")
    assert settings.database_url is not None  # filled in by Settings
    model_versions = ModelVersions(settings.model_dir)
    store = CorrectionStore(settings.database_url)
    client = (
        LabelStudioClient(settings.label_studio_url, settings.label_studio_token.get_secret_value())
        if settings.label_studio_url and settings.label_studio_token
        else None
    )
    service = Service(
        settings, store=store, model_versions=model_versions, retrainer=None, labelstudio=client
    )
    if settings.retrain and is_postgres(settings.database_url):
        queue = JobQueue(
            settings,
            store,
            model_versions,
            on_promote=service.on_promote if settings.role == "all" else None,
            corpora=corpora,
            trainer=trainer,
        )
        service.retrainer = queue
    elif settings.retrain and settings.role == "all":
        service.retrainer = Retrainer(
            settings, store, model_versions, on_promote=service.on_promote, corpora=corpora, trainer=trainer
        )
    model: Path | None = settings.model or model_versions.current()
    if model is not None:
        service.predictor.load(model)
    else:
        log.warning("no model to serve yet: predictions answer 503 until one is promoted")
    for name, path in settings.serve_models.items():
        service.add_model(name, path)
    return service


def _watch_promoted(service: Service, stop: threading.Event) -> None:
    """Pick up promotions and rollbacks made by another process (a trainer, another replica,
    ``kiwi models promote``): the new model is loaded once, beside the old one, and swapped in."""
    while not stop.wait(service.settings.registry_poll_seconds):
        try:
            current = service.model_versions.current_version()
            if current is not None and current != service.predictor.version:
                service.predictor.load(service.model_versions.path(current))
        except Exception as e:  # the watcher must outlive a damaged registry.json or model folder
            log.warning("registry poll failed: %s", type(e).__name__)


def create_app(
    settings: Settings | None = None, *, corpora: Corpora | None = None, trainer: Trainer | None = None
) -> FastAPI:
    """The application. ``corpora`` and ``trainer`` override the retraining loop's (tests)."""
    settings = settings or load_settings()
    for reason in settings.unsafe_reasons():
        log.warning("%s", reason)
    service = build_service(settings, corpora=corpora, trainer=trainer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        if isinstance(service.retrainer, JobQueue) and settings.role == "all":
            service.retrainer.start_worker()
        if settings.precompute:
            service.ahead.start()
        if settings.model is None:
            threading.Thread(
                target=_watch_promoted, args=(service, stop), name="kiwi-registry-watch", daemon=True
            ).start()
        try:
            yield
        finally:
            stop.set()
            service.ahead.stop()
            service.evidence.close()
            if service.retrainer is not None:
                service.retrainer.shutdown()
            if service.labelstudio is not None:
                service.labelstudio.close()
            service.store.close()

    app = FastAPI(
        title="Kiwi Recommender",
        version=__version__,
        description=(
            "Clinical pre-annotation (Kiwi schema: entities, modifiers, hasAttr) for INCEpTION's "
            "external recommender protocol and Label Studio's ML backend protocol, with a correction "
            "store and evaluation-gated retraining."
        ),
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = settings
    http_errors.install(app)
    routers = (
        inception_recommender.router,
        labelstudio_backend.router,
        labelstudio_backend.model_router,
        admin.router,
        reports.router,
    )
    for router in routers:
        app.include_router(router, responses=http_errors.ERROR_RESPONSES)
    # Added last = outermost: authenticate before reading a body, limit it before parsing it.
    app.add_middleware(CatchAllMiddleware, log_note_text=settings.log_note_text)
    app.add_middleware(StatsMiddleware, stats=service.stats)
    app.add_middleware(SizeLimitMiddleware, limit=settings.max_request_bytes)
    if settings.auth_enabled:
        app.add_middleware(
            AuthMiddleware,
            token=settings.auth_token,
            basic_user=settings.basic_auth_user,
            basic_password=settings.basic_auth_password,
        )
    return app


def uvicorn_config(app: FastAPI, settings: Settings, *, log_level: str = "info") -> uvicorn.Config:
    """The server settings ``kiwi serve`` uses (and the tests that start a real server).

    ``http="h11"``: INCEpTION's JDK client offers an h2c upgrade on every plain-HTTP request, and
    uvicorn's httptools parser then hands the application an empty body; h11 ignores the offer.
    """
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="h11",
        ws="none",
        lifespan="on",
        log_level=log_level,
        server_header=False,
    )


@contextmanager
def running_server(app: FastAPI, settings: Settings, *, log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` with ``kiwi serve``'s server settings in a thread; yields the base URL.

    For tests and benchmarks that need real sockets (port 0 picks a free port)."""
    server = uvicorn.Server(uvicorn_config(app, settings, log_level=log_level))
    thread = threading.Thread(target=server.run, name="kiwi-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
