"""``kiwi serve``: the INCEpTION / Label Studio service under uvicorn."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recommender.cli.common import err_console, progress
from recommender.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from recommender.settings import Settings


def say(line: str) -> None:
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


commands = typer.Typer()  # this module's commands, loaded by the root on first use


@commands.command()
def serve(
    model: Annotated[
        Path | None, typer.Option(help="serve this model folder (default: the promoted version)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="address to bind (default 127.0.0.1, KIWI_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default 5000, KIWI_PORT)")] = None,
    model_dir: Annotated[
        Path | None, typer.Option(help="versioned models folder (default kiwi_models, KIWI_MODEL_DIR)")
    ] = None,
    bootstrap: Annotated[
        bool, typer.Option(help="with no promoted model, first train one on the seed corpus")
    ] = False,
    role: Annotated[
        str | None,
        typer.Option(
            help="all: serve and train (default, KIWI_ROLE); api: serve and queue training jobs; "
            "trainer: run the queued jobs (api and trainer need KIWI_DATABASE_URL=postgresql://...)"
        ),
    ] = None,
    also: Annotated[
        list[str] | None,
        typer.Option(
            "--also",
            help="NAME=DIR: serve the model folder DIR beside the main one, at /inception/NAME/entities, "
            "/inception/NAME/relations and /labelstudio/NAME (repeatable; KIWI_SERVE_MODELS)",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Serve pre-annotations to INCEpTION (/inception/{name}/predict|train) and Label Studio."""
    import uvicorn

    from recommender.model_versions import ModelVersions
    from recommender.retraining import bootstrap as train_first_model
    from recommender.service.app import create_app, uvicorn_config
    from recommender.settings import load_settings

    overrides = {"model": model, "host": host, "port": port, "model_dir": model_dir, "role": role}
    if also:
        overrides["serve_models"] = load_settings().serve_models | _named_folders(also)
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    logging.getLogger("recommender").setLevel(log_level.upper())
    # A trainer needs no model to start: its first job trains one unless --bootstrap asks for it now.
    if settings.model is None and (bootstrap or settings.role != "trainer"):
        model_versions = ModelVersions(settings.model_dir)
        if model_versions.current() is None and settings.role == "api" and not bootstrap:
            # A replica started beside the trainer that bootstraps the first model (docker/compose.yml).
            say(f"No promoted model in {settings.model_dir} yet: waiting for a trainer to promote one.")
            while model_versions.current() is None:
                time.sleep(settings.registry_poll_seconds)
        if model_versions.current() is None:
            if not bootstrap:
                raise ModelError(
                    f"no promoted model in [{settings.model_dir}]: run `kiwi serve --bootstrap` to train "
                    "one on the seed corpus first, or pass --model DIR"
                )
            say(f"No promoted model in {settings.model_dir}: training a first one ({settings.trainer}).")
            path = train_first_model(settings, model_versions, track=progress, say=say)
            say(f"Promoted {path.name} as the baseline.")
    if settings.role == "trainer":
        _run_trainer(settings)
        return
    say(f"Serving on http://{settings.host}:{settings.port}/ (status page; OpenAPI docs at /docs).")
    for name in settings.serve_models:
        say(f"  {name}: /inception/{name}/entities, /inception/{name}/relations, /labelstudio/{name}")
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings, log_level=log_level.lower()))
    server.run()


def _named_folders(values: list[str]) -> dict[str, Path]:
    out = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"--also takes NAME=DIR, got [{value}]")
        out[name] = Path(folder)
    return out


def _run_trainer(settings: Settings) -> None:
    """Run queued training jobs until SIGINT/SIGTERM."""
    from recommender.model_versions import ModelVersions
    from recommender.retraining.queue import JobQueue
    from recommender.store import CorrectionStore
    from recommender.store.database import is_postgres

    assert settings.database_url is not None  # filled in by Settings
    if not is_postgres(settings.database_url):
        raise ConfigError(
            "the trainer role takes its jobs from PostgreSQL: set KIWI_DATABASE_URL=postgresql://..."
        )
    store = CorrectionStore(settings.database_url)
    try:
        err_console.print(f"Trainer ({settings.trainer}) waiting for jobs.", markup=False)
        JobQueue(settings, store, ModelVersions(settings.model_dir)).run_worker()
    finally:
        store.close()
