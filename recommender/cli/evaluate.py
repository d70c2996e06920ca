"""Evaluation commands: evaluate (files or a model) and compare (the paper's significance test)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from recommender.cli.common import console, drops_line, err_console, progress
from recommender.document import Document
from recommender.errors import ConfigError
from recommender.evaluation.matching import MODES
from recommender.evaluation.scorer import (
    TASKS,
    Evaluation,
    TaskCounts,
    count,
    evaluate_extractor,
    predict_for_scoring,
)
from recommender.evaluation.scorer import evaluate as score_documents
from recommender.evaluation.stats import RESAMPLES, SEED
from recommender.evaluation.stats import compare as compare_counts
from recommender.extractors.base import MODEL_INFO_FILE
from recommender.formats import FORMATS, get_format, read_documents

_FORMATS = ", ".join(FORMATS)
commands = typer.Typer()  # this module's commands, loaded by the root on first use

GoldFormat = Annotated[
    str | None, typer.Option("--format", help=f"format of GOLD (and PRED unless --pred-format): {_FORMATS}")
]
PredFormat = Annotated[str | None, typer.Option("--pred-format", help="format of PRED (default: --format)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the scores as JSON on stdout, nothing else")]
Resamples = Annotated[int, typer.Option(help="bootstrap resamples of the documents")]
Seed = Annotated[int, typer.Option(help="seed of the bootstrap resampling")]


@commands.command()
def evaluate(
    paths: Annotated[list[Path], typer.Argument(help="GOLD PRED, or only GOLD with --model")],
    model: Annotated[Path | None, typer.Option("--model", help="predict GOLD with this model folder")] = None,
    fmt: GoldFormat = None,
    pred_format: PredFormat = None,
    json_out: JsonOpt = False,
    batch_size: Annotated[int, typer.Option(help="notes per prediction batch (with --model)")] = 8,
    resamples: Resamples = RESAMPLES,
    seed: Seed = SEED,
) -> None:
    """Score predictions against gold: NER, RE and all spans, exact and relaxed, with 95% intervals.

    With --model: NER and spans predicted from raw text, RE given GOLD's main entities (as the paper).
    """
    if model is not None:
        if len(paths) != 1:
            raise ConfigError(f"with --model give only GOLD, not [{' '.join(map(str, paths))}]")
        gold = _read(paths[0], fmt)
        from recommender.extractors import load_extractor

        extractor = load_extractor(model)
        result = evaluate_extractor(
            extractor,
            gold,
            batch_size=batch_size,
            track=lambda items, description, total: progress(items, description, total),
            resamples=resamples,
            seed=seed,
        )
        title = f"{model} ({extractor.version}) on {paths[0]}"
    else:
        if len(paths) != 2:
            raise ConfigError(f"give GOLD and PRED (or GOLD with --model), not [{' '.join(map(str, paths))}]")
        gold = _read(paths[0], fmt)
        pred = _read(paths[1], pred_format or fmt)
        result = score_documents(gold, pred, resamples=resamples, seed=seed)
        title = f"{paths[1]} against {paths[0]}"
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        _print_evaluation(result, title)


@commands.command()
def compare(
    gold_path: Annotated[Path, typer.Argument(metavar="GOLD", help="gold annotations")],
    pred_a: Annotated[Path, typer.Argument(metavar="A", help="predictions of system A, or its model folder")],
    pred_b: Annotated[Path, typer.Argument(metavar="B", help="predictions of system B, or its model folder")],
    fmt: GoldFormat = None,
    pred_format: PredFormat = None,
    json_out: JsonOpt = False,
    batch_size: Annotated[int, typer.Option(help="notes per prediction batch (model folders)")] = 8,
    resamples: Resamples = RESAMPLES,
    seed: Seed = SEED,
) -> None:
    """Is A better than B? One-sided Wilcoxon rank-sum over paired bootstrap resamples (the paper's test).

    A model folder (kiwi_model.json) is run on GOLD as `kiwi evaluate --model` runs it: NER and spans
    from raw text, RE with GOLD's main entities given.
    """
    gold = _read(gold_path, fmt)
    counts_a = _counts(gold, pred_a, pred_format or fmt, batch_size)
    counts_b = _counts(gold, pred_b, pred_format or fmt, batch_size)
    out: dict[str, dict[str, Any]] = {
        task: {
            mode: compare_counts(
                counts_a[task].micro(mode), counts_b[task].micro(mode), resamples, seed
            ).to_dict()
            for mode in MODES
        }
        for task in TASKS
    }
    if json_out:
        typer.echo(json.dumps(out, indent=2))
        return
    table = Table("task", "match", "F1 A", "F1 B", "p (A > B)", title=f"A = {pred_a}, B = {pred_b}")
    for task, modes in out.items():
        for mode, c in modes.items():
            table.add_row(task, mode, f"{c['f1_a']:.3f}", f"{c['f1_b']:.3f}", f"{c['p_value']:.2g}")
    console.print(table)


def _counts(gold: list[Document], path: Path, fmt: str | None, batch_size: int) -> dict[str, TaskCounts]:
    """Counts of a prediction file, or of a model folder's predictions of ``gold``."""
    if (path / MODEL_INFO_FILE).is_file():
        from recommender.extractors import load_extractor

        extractor = load_extractor(path)
        pred, re_pred, _ = predict_for_scoring(extractor, gold, batch_size=batch_size, track=progress)
        return count(gold, pred, re_pred=re_pred)
    return count(gold, _read(path, fmt))


def _read(path: Path, fmt: str | None) -> list[Document]:
    if fmt is not None:
        get_format(fmt)  # an unknown format fails before any reading
    docs = read_documents(path, fmt)
    err_console.print(f"read {len(docs)} notes from {path}", highlight=False)
    return docs


def _print_evaluation(result: Evaluation, title: str) -> None:
    table = Table(
        "task", "match", "precision", "recall", "F1", "95% CI", "tp", "fp", "fn", title=title, highlight=False
    )
    for task in TASKS:
        for mode in MODES:
            s = result.task(task).mode(mode)
            lo, hi = s.ci_f1
            table.add_row(
                task,
                mode,
                f"{s.precision:.3f}",
                f"{s.recall:.3f}",
                f"{s.f1:.3f}",
                f"{lo:.3f}-{hi:.3f}",
                str(s.tp),
                str(s.fp),
                str(s.fn),
            )
    console.print(table)
    for task in ("spans", "re"):
        per_type = Table(
            "type", "gold", "pred", "P exact", "R exact", "F1 exact", "F1 relaxed", title=f"{task} per type"
        )
        for name, modes in result.task(task).per_type.items():
            e, r = modes["exact"], modes["relaxed"]
            if e.tp + e.fn + e.fp == 0:
                continue
            per_type.add_row(
                name,
                str(e.tp + e.fn),
                str(e.tp + e.fp),
                f"{e.precision:.3f}",
                f"{e.recall:.3f}",
                f"{e.f1:.3f}",
                f"{r.f1:.3f}",
            )
        console.print(per_type)
    if result.drops:
        console.print(drops_line(result.drops), highlight=False)
    if result.speed:
        console.print(
            f"{result.speed['seconds_per_note']:.3f} s per note from text, "
            f"{result.speed['re_seconds_per_note']:.3f} s per note with entities given",
            highlight=False,
        )
