"""``kiwi serve``: the INCEpTION / Label Studio service under uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from recommender.cli import app
from recommender.cli.common import err_console, progress
from recommender.errors import ModelError
from recommender.settings import load_settings


@app.command()
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
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Serve pre-annotations to INCEpTION (/inception/{name}/predict|train) and Label Studio."""
    import uvicorn

    from recommender.registry import ModelRegistry
    from recommender.retraining import bootstrap as train_first_model
    from recommender.service.app import create_app, uvicorn_config

    overrides = {"model": model, "host": host, "port": port, "model_dir": model_dir}
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    logging.getLogger("recommender").setLevel(log_level.upper())
    if settings.model is None:
        registry = ModelRegistry(settings.model_dir)
        if registry.current() is None:
            if not bootstrap:
                raise ModelError(
                    f"no promoted model in [{settings.model_dir}]: run `kiwi serve --bootstrap` to train "
                    "one on the seed corpus first, or pass --model DIR"
                )
            err_console.print(
                f"No promoted model in {settings.model_dir}: training a first one ({settings.trainer}) "
                "on the seed corpus.",
                markup=False,
            )
            path = train_first_model(settings, registry, track=progress)
            err_console.print(f"Promoted {path.name}.", markup=False)
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings, log_level=log_level.lower()))
    server.run()
