"""``kiwi precompute``: a slow model's predictions computed ahead, into the service's prediction cache,
and pushed to a Label Studio project task by task.

Notes already predicted by this model version (same text) are taken from the cache, so a run that
stopped resumes where it was; ``--label-studio`` also keeps the tasks it has pushed in a position
file and skips them when run again with the same model version. With ``--ray`` (``ray_run``) the
project itself says which tasks are done: those carrying a prediction of the model version.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from recommender.cli import ray_run
from recommender.cli.common import err_console, progress
from recommender.document import Document
from recommender.errors import ConfigError, NotFoundError
from recommender.settings import DEFAULT_MODEL

if TYPE_CHECKING:
    from recommender.extractors.base import Extractor
    from recommender.settings import Settings
    from recommender.store.predictions import PredictionCache
    from recommender.store.suggestions import SuggestionLog


def say(line: str) -> None:
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


commands = typer.Typer()  # this module's commands, loaded by the root on first use


@commands.command()
def precompute(
    model: Annotated[Path, typer.Option(help="model folder (kiwi_model.json) whose predictions to compute")],
    notes: Annotated[
        Path | None,
        typer.Argument(help="notes: a folder of .txt (brat), a Label Studio export or any format kiwi reads"),
    ] = None,
    name: Annotated[
        str, typer.Option(help="the name the service serves the model under (KIWI_SERVE_MODELS), for /status")
    ] = DEFAULT_MODEL,
    label_studio: Annotated[
        int | None,
        typer.Option(
            "--label-studio",
            help="PROJECT id: predict every task of the project and push each prediction as it is "
            "computed (KIWI_LABEL_STUDIO_URL and KIWI_LABEL_STUDIO_TOKEN)",
        ),
    ] = None,
    position: Annotated[
        Path | None,
        typer.Option(
            help="resumable position of --label-studio (default MODEL_DIR/precompute/labelstudio-ID.json)"
        ),
    ] = None,
    from_: Annotated[str | None, typer.Option("--from", help="input format (default: detected)")] = None,
    ray: ray_run.RayFlag = False,
    ray_address: ray_run.RayAddress = None,
    ray_actors: ray_run.RayActors = None,
    ray_actor_cpus: ray_run.RayActorCpus = 1.0,
    engine_url: ray_run.EngineUrls = None,
    label_studio_writers: ray_run.LabelStudioWriters = ray_run.WRITERS,
) -> None:
    """Compute a model's predictions ahead of the annotator into the prediction cache (KIWI_DATABASE_URL)."""
    from recommender.extractors import load_extractor
    from recommender.settings import load_settings
    from recommender.store import CorrectionStore
    from recommender.store.predictions import PredictionCache
    from recommender.store.suggestions import SuggestionLog

    if (notes is None) == (label_studio is None):
        raise ConfigError("give NOTES or --label-studio PROJECT (one of them)")
    if ray or ray_address:
        if position is not None:
            raise ConfigError("--position is not used with --ray: the project says which tasks are done")
        ray_run.run(
            model, notes, from_, address=ray_address, actors=ray_actors, actor_cpus=ray_actor_cpus,
            batch_size=16, engine_urls=engine_url, name=name, label_studio=label_studio,
            writers=label_studio_writers,
        )  # fmt: skip
        return
    settings = load_settings()
    assert settings.database_url is not None  # filled in by Settings
    extractor = load_extractor(model, settings.extractor_overrides())
    store = CorrectionStore(settings.database_url)
    try:
        ahead = Ahead(PredictionCache(store.engine), name, extractor, settings.precompute_attempts)
        if notes is not None:
            _notes(ahead, notes, from_)
        else:
            assert label_studio is not None
            where = position or settings.model_dir / "precompute" / f"labelstudio-{label_studio}.json"
            suggestions = SuggestionLog(store.engine) if settings.suggestion_log else None
            _label_studio(ahead, settings, label_studio, where, suggestions)
    finally:
        store.close()


class Ahead:
    """Predictions of one model version through the cache: computed once, then read back."""

    def __init__(self, cache: PredictionCache, name: str, extractor: Extractor, attempts: int) -> None:
        self.cache, self.name, self.extractor, self.attempts = cache, name, extractor, attempts
        self.computed = self.cached = 0
        self.failed: list[str] = []

    def predict(self, doc: Document) -> Document | None:
        """The prediction for ``doc``'s text; None when every attempt failed (reported, not stored)."""
        from recommender.store.predictions import input_hash

        version = self.extractor.version
        entry = self.cache.lookup(version, "text", [input_hash(doc, "text")]).get(input_hash(doc, "text"))
        if entry is not None and entry.state == "done" and entry.document is not None:
            self.cached += 1
            entry.document.id = doc.id
            return entry.document
        source = Document(id=doc.id, text=doc.text)
        for attempt in range(1, self.attempts + 1):
            try:
                [predicted] = self.extractor.predict([source])
            except Exception as e:  # any engine failure: retried, then reported
                say(f"note [{doc.id}]: attempt {attempt} of {self.attempts} failed ({type(e).__name__})")
                continue
            self.cache.put(self.name, version, "text", source, predicted)
            self.computed += 1
            return predicted
        self.failed.append(doc.id)
        return None

    def summary(self) -> str:
        line = f"{self.computed} computed, {self.cached} from the cache by {self.extractor.version}"
        return line + (f"; failed: {', '.join(self.failed)}" if self.failed else "")


def _notes(ahead: Ahead, path: Path, fmt: str | None) -> None:
    from recommender.formats import detect_format, read_documents

    if not path.exists():
        raise NotFoundError("no such file or folder", source=path)
    docs = [d for d in read_documents(path, fmt or detect_format(path)) if d.text.strip()]
    for doc in progress(docs, "precomputing", total=len(docs)):
        ahead.predict(doc)
    say(f"{len(docs)} notes: {ahead.summary()}")
    if ahead.failed:
        raise typer.Exit(1)


def _label_studio(
    ahead: Ahead, settings: Settings, pid: int, where: Path, suggestions: SuggestionLog | None = None
) -> None:
    from recommender.formats.labelstudio import document_prediction, labeling_config, task_text
    from recommender.guidelines import labelstudio_config
    from recommender.service.labelstudio_client import LabelStudioClient
    from recommender.store.suggestions import NewSuggestion

    if settings.label_studio_url is None or settings.label_studio_token is None:
        raise ConfigError("--label-studio needs KIWI_LABEL_STUDIO_URL and KIWI_LABEL_STUDIO_TOKEN")
    client = LabelStudioClient(settings.label_studio_url, settings.label_studio_token.get_secret_value())
    version = ahead.extractor.version
    try:
        config = labeling_config(client.project(pid).get("label_config") or labelstudio_config())
        tasks = sorted(client.tasks(pid), key=lambda t: int(t["id"]))
        after, failed = _read_position(where, pid, version)
        todo = [t for t in tasks if int(t["id"]) > after or int(t["id"]) in failed]
        say(
            f"Label Studio project {pid}: {len(tasks)} task(s), {len(tasks) - len(todo)} done before "
            f"by {version}, {len(todo)} to go (position: {where})"
        )
        dropped: dict[str, int] = {}
        pushed = 0
        project = f"labelstudio-{pid}"  # as the backend stores the project's corrections
        for task in progress(todo, "predicting and pushing", total=len(todo)):
            task_id = int(task["id"])
            text = task_text(task, config)
            predicted = ahead.predict(Document(id=str(task_id), text=text)) if text.strip() else None
            if predicted is not None:
                shown = config.restrict(predicted, dropped)
                prediction = document_prediction(shown, config, version)
                client.create_prediction(task_id, prediction)
                if suggestions is not None:  # what the annotator will see, for the corrections' scores
                    suggestions.record(
                        [
                            NewSuggestion(
                                ahead.name, version, "precompute", "all", project, f"task-{task_id}", shown
                            )
                        ]
                    )
                pushed += 1
                failed.discard(task_id)
            elif text.strip():
                failed.add(task_id)  # every attempt failed: the next run tries it again
            after = max(after, task_id)
            _write_position(where, pid, version, after, failed)
    finally:
        client.close()
    say(f"{pushed} prediction(s) of {version} pushed to {len(todo)} task(s): {ahead.summary()}")
    if dropped:
        say(f"labels the project's config lacks, not sent: {dropped}")
    if ahead.failed:
        raise typer.Exit(1)


def _read_position(where: Path, pid: int, version: str) -> tuple[int, set[int]]:
    """(the last task id done, the ids that failed) by an earlier run of this model version; tasks
    are done in id order. Another version starts over."""
    if not where.is_file():
        return 0, set()
    try:
        data: dict[str, Any] = json.loads(where.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise ConfigError("unreadable position file; delete it to start over", source=where) from None
    if data.get("project") != pid or data.get("model_version") != version:
        return 0, set()
    return int(data.get("after", 0)), {int(t) for t in data.get("failed", [])}


def _write_position(where: Path, pid: int, version: str, after: int, failed: set[int]) -> None:
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = where.with_suffix(".tmp")
    body = {"project": pid, "model_version": version, "after": after, "failed": sorted(failed)}
    tmp.write_text(json.dumps(body) + "\n", encoding="utf-8")
    os.replace(tmp, where)  # a run killed mid-write keeps the previous position
