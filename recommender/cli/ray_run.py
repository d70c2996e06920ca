"""``kiwi predict --ray`` and ``kiwi precompute --ray``: the corpus run of ``recommender.batch`` with
the service's prediction cache (KIWI_DATABASE_URL), so the service answers from it at once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recommender.cli.common import err_console
from recommender.errors import ConfigError

# The options both commands take (kept here so the commands stay short).
RayFlag = Annotated[
    bool, typer.Option("--ray", help="run on Ray Data (the ray extra): an embedded local Ray")
]
RayAddress = Annotated[
    str | None, typer.Option(help="run on this Ray cluster (HEAD:PORT; auto on its nodes); implies --ray")
]
RayActors = Annotated[
    int | None,
    typer.Option(
        help="--ray: model actors (default: the cluster's CPUs / --ray-actor-cpus; a LLaMA: one per "
        "--engine-url)"
    ),
]
RayActorCpus = Annotated[float, typer.Option(help="--ray: CPUs per actor, its torch threads")]
EngineUrls = Annotated[
    list[str] | None,
    typer.Option(
        "--engine-url",
        help="--ray with a LLaMA: an OpenAI-compatible server (vLLM); repeat for several, one actor each",
    ),
]


def run(
    model: Path,
    src: Path,
    fmt: str | None,
    *,
    address: str | None,
    actors: int | None,
    actor_cpus: float,
    batch_size: int,
    engine_urls: list[str] | None,
    name: str | None = None,
    dst: Path | None = None,
    to: str = "brat",
) -> None:
    """Predict ``src`` through the cache on Ray; write ``dst`` in ``to`` when given; exit 1 when a
    note's model call failed (bad notes are listed and the run goes on)."""
    from recommender.batch.notes import OUTPUT_FORMATS, read_corpus, write_results
    from recommender.batch.ray_runner import RayOptions, run_corpus, text_hashes
    from recommender.settings import DEFAULT_MODEL, load_settings
    from recommender.store import CorrectionStore
    from recommender.store.predictions import PredictionCache

    if dst is not None and to not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format [{to}]; expected one of {', '.join(OUTPUT_FORMATS)}")
    settings = load_settings()
    assert settings.database_url is not None  # filled in by Settings
    corpus = read_corpus(src, fmt, settings.max_note_chars)
    options = RayOptions(
        address=address,
        actors=actors,
        actor_cpus=actor_cpus,
        batch_size=batch_size,
        engine_urls=tuple(engine_urls or ()),
        overrides=settings.extractor_overrides(),
    )
    store = CorrectionStore(settings.database_url)
    try:
        cache = PredictionCache(store.engine)
        docs, summary = run_corpus(model, corpus, cache, name or DEFAULT_MODEL, options)
    finally:
        store.close()
    if dst is not None:
        write_results(docs, dst, to, summary.version, text_hashes(corpus))
    for line in summary.lines():
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    if dst is not None:
        err_console.print(f"written: {dst}", markup=False, highlight=False, soft_wrap=True)
    if summary.failed:
        raise typer.Exit(1)
