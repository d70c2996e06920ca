"""``kiwi models list|promote|rollback``: the model versions from the command line.

A running service picks up a promotion made here on its next check of the promoted version; the
retraining loop and these commands share one file lock, so they never overwrite each other's pointer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from recommender.cli.common import console
from recommender.model_versions import ModelVersions

commands = typer.Typer()  # this module's commands, loaded by the root on first use

models_app = typer.Typer(help="List, promote and roll back model versions.", no_args_is_help=True)
commands.add_typer(models_app, name="models")

ModelDir = Annotated[
    Path | None,
    typer.Option(
        "--model-dir", help="the versioned model folder (default: the service setting KIWI_MODEL_DIR)"
    ),
]


def _model_versions(model_dir: Path | None) -> ModelVersions:
    if model_dir is None:
        from recommender.settings import load_settings

        model_dir = load_settings().model_dir
    return ModelVersions(model_dir)


def metric_summary(metrics: dict[str, Any]) -> str:
    """Exact NER and RE F1 from whichever evaluation a model folder carries (gate, evaluate, training)."""
    for path in (("gate", "candidate", "dev"), ("evaluation",), ("dev",), ()):
        block: Any = metrics
        for key in path:
            block = block.get(key, {}) if isinstance(block, dict) else {}
        parts = []
        for task in ("ner", "re"):
            score = block.get(task, {}) if isinstance(block, dict) else {}
            f1 = score.get("exact", score).get("f1") if isinstance(score, dict) else None
            if isinstance(f1, int | float):
                parts.append(f"{task.upper()} {f1:.3f}")
        if parts:
            return "  ".join(parts)
    return "-"


@models_app.command("list")
def list_models(
    model_dir: ModelDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Every model version, oldest first, with its status and scores."""
    versions = _model_versions(model_dir).versions()
    if as_json:
        console.print_json(json.dumps([v.to_dict() for v in versions]))
        return
    table = Table(title=f"models in {_model_versions(model_dir).folder}")
    for column in ("version", "extractor", "created", "metrics (dev, exact F1)", "status"):
        table.add_column(column)
    for v in versions:
        status = f"{v.status}: {v.reason}" if v.reason else v.status
        style = "bold green" if v.status == "promoted" else "dim" if v.status == "rejected" else None
        table.add_row(v.version, v.extractor, v.created, metric_summary(v.metrics), status, style=style)
    console.print(table)
    served = _served_beside()
    if served:
        beside = Table(
            title="served beside it (KIWI_SERVE_MODELS; INCEpTION /inception/NAME/..., "
            "Label Studio /labelstudio/NAME)"
        )
        for column in ("name", "folder", "version", "extractor"):
            beside.add_column(column)
        for row in served:
            beside.add_row(*row)
        console.print(beside)


def _served_beside() -> list[tuple[str, str, str, str]]:
    """The models the service serves beside the promoted version, as the settings name them."""
    from recommender.errors import ModelError
    from recommender.extractors.base import ModelInfo
    from recommender.settings import load_settings

    rows = []
    for name, folder in sorted(load_settings().serve_models.items()):
        try:
            info = ModelInfo.load(folder)
            rows.append((name, str(folder), info.version, info.extractor))
        except ModelError as e:
            rows.append((name, str(folder), f"unreadable: {e}", "-"))
    return rows


@models_app.command("promote")
def promote(
    version: Annotated[str, typer.Argument(help="the version to serve")], model_dir: ModelDir = None
) -> None:
    """Serve VERSION from now on (a running service switches without dropping requests)."""
    path = _model_versions(model_dir).promote(version, reason="kiwi models promote")
    console.print(f"promoted {version} ({path})", markup=False, highlight=False)


@models_app.command("rollback")
def rollback(model_dir: ModelDir = None) -> None:
    """Go back to the version promoted before the current one."""
    version = _model_versions(model_dir).rollback()
    console.print(f"rolled back to {version}", markup=False, highlight=False)
