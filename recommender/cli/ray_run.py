"""``kiwi predict --ray`` and ``kiwi precompute --ray``: the corpus run of ``recommender.batch`` with
the service's prediction cache (KIWI_DATABASE_URL), so the service answers from it at once; from a
folder or file of notes, or from a Label Studio project and back into it as predictions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recommender.cli.common import err_console
from recommender.errors import ConfigError

if TYPE_CHECKING:
    from recommender.batch.ray_runner import RayOptions
    from recommender.settings import Settings

WRITERS = 2  # requests pushing predictions to Label Studio at once, by default

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
LabelStudioProject = Annotated[
    int | None,
    typer.Option(
        "--label-studio",
        help="--ray: PROJECT id: predict the project's tasks that lack a prediction of the model's version "
        "and push one to each (KIWI_LABEL_STUDIO_URL and KIWI_LABEL_STUDIO_TOKEN)",
    ),
]
LabelStudioWriters = Annotated[
    int,
    typer.Option(
        help="--ray --label-studio: requests pushing predictions (100 each) to Label Studio at once"
    ),
]
EngineUrls = Annotated[
    list[str] | None,
    typer.Option(
        "--engine-url",
        help="--ray with a LLaMA: an OpenAI-compatible server (vLLM); repeat for several, one actor each",
    ),
]


def run(
    model: Path,
    src: Path | None,
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
    label_studio: int | None = None,
    writers: int = WRITERS,
) -> None:
    """Predict ``src`` (or the Label Studio project ``label_studio``) through the cache on Ray; write
    ``dst`` in ``to`` when given; push the project's predictions back to it. Exit 1 when a note's model
    call or a push failed (bad notes are listed and the run goes on)."""
    from recommender.batch.notes import OUTPUT_FORMATS, read_corpus, write_results
    from recommender.batch.ray_runner import RayOptions, run_corpus, text_hashes
    from recommender.settings import DEFAULT_MODEL, load_settings
    from recommender.store import CorrectionStore
    from recommender.store.predictions import PredictionCache

    if dst is not None and to not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format [{to}]; expected one of {', '.join(OUTPUT_FORMATS)}")
    settings = load_settings()
    assert settings.database_url is not None  # filled in by Settings
    options = RayOptions(
        address=address,
        actors=actors,
        actor_cpus=actor_cpus,
        batch_size=batch_size,
        engine_urls=tuple(engine_urls or ()),
        overrides=settings.extractor_overrides(),
    )
    name = name or DEFAULT_MODEL
    if label_studio is not None:
        _project(model, label_studio, settings, options, name, writers)
        return
    assert src is not None
    corpus = read_corpus(src, fmt, settings.max_note_chars)
    store = CorrectionStore(settings.database_url)
    try:
        docs, summary = run_corpus(model, corpus, PredictionCache(store.engine), name, options)
    finally:
        store.close()
    if dst is not None:
        write_results(docs, dst, to, summary.version, text_hashes(corpus))
    _say(summary.lines())
    if dst is not None:
        _say([f"written: {dst}"])
    if summary.failed:
        raise typer.Exit(1)


def _project(
    model: Path, project_id: int, settings: Settings, options: RayOptions, name: str, writers: int
) -> None:
    """The project's tasks without a prediction of the model's version, predicted on Ray and pushed."""
    from recommender.batch.labelstudio_project import push_predictions, read_project
    from recommender.batch.ray_runner import run_corpus
    from recommender.extractors.base import ModelInfo
    from recommender.service.labelstudio_client import LabelStudioClient
    from recommender.store import CorrectionStore
    from recommender.store.predictions import PredictionCache
    from recommender.store.suggestions import NewSuggestion, SuggestionLog

    if settings.label_studio_url is None or settings.label_studio_token is None:
        raise ConfigError("--label-studio needs KIWI_LABEL_STUDIO_URL and KIWI_LABEL_STUDIO_TOKEN")
    if writers <= 0:
        raise ConfigError(f"--label-studio-writers must be positive, got [{writers}]")
    version = ModelInfo.load(model).version
    client = LabelStudioClient(settings.label_studio_url, settings.label_studio_token.get_secret_value())
    assert settings.database_url is not None  # filled in by Settings
    store = CorrectionStore(settings.database_url)
    try:
        project = read_project(client, project_id, version, settings.max_note_chars)
        _say([project.line()])
        docs, summary = run_corpus(model, project.corpus, PredictionCache(store.engine), name, options)
        _say(summary.lines())
        pushed = push_predictions(client, project, docs, writers)
        if settings.suggestion_log and pushed.shown:  # what the annotators see, for the corrections' scores
            where = f"labelstudio-{project_id}"  # as the backend stores the project's corrections
            SuggestionLog(store.engine).record(
                [
                    NewSuggestion(name, version, "precompute", "all", where, f"task-{d.id}", d)
                    for d in pushed.shown
                ]
            )
    finally:
        store.close()
        client.close()
    _say(pushed.lines(project))
    if summary.failed or pushed.failed:
        raise typer.Exit(1)


def _say(lines: list[str]) -> None:
    for line in lines:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
