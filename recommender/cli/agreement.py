"""``kiwi agreement``: inter-annotator agreement reports from brat, Label Studio and INCEpTION."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from recommender.agreement.inputs import INPUT_FORMATS, add_model_rater, load_raters
from recommender.agreement.render import EXAMPLES, write_report
from recommender.agreement.report import agreement_report
from recommender.cli.common import err_console, progress
from recommender.evaluation.stats import RESAMPLES, SEED

commands = typer.Typer()  # this module's commands, loaded by the root on first use


@commands.command()
def agreement(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="brat/XMI folders (one per annotator), a Label Studio JSON export or an INCEpTION zip"
        ),
    ],
    fmt: Annotated[
        str | None,
        typer.Option("--format", help=f"input type: {', '.join(INPUT_FORMATS)} (default: detected)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="write agreement.html, .md and .json (with note text) here")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="print the report as JSON on stdout, without note text")
    ] = False,
    model: Annotated[
        Path | None, typer.Option("--model", help="add this model folder as one more rater")
    ] = None,
    suggestions: Annotated[
        str | None,
        typer.Option(
            "--suggestions",
            help="add a model-vs-annotators table from the service's suggestion log (KIWI_DATABASE_URL) "
            "for this project (labelstudio-ID, inception-ID; 'all' for every project)",
        ),
    ] = None,
    examples: Annotated[int, typer.Option(help="disagreement examples shown in HTML/Markdown")] = EXAMPLES,
    resamples: Annotated[int, typer.Option(help="bootstrap resamples of the notes")] = RESAMPLES,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap resampling")] = SEED,
) -> None:
    """Agreement between annotators: pairwise F1, Cohen's and Fleiss' kappa, Krippendorff's alpha."""
    raters = load_raters(inputs, fmt)
    if model is not None:
        from recommender.extractors import load_extractor

        name = add_model_rater(raters, load_extractor(model))
        err_console.print(f"added model rater {name}", highlight=False, markup=False)
    err_console.print(f"{len(raters)} raters: {', '.join(raters)}", highlight=False, markup=False)
    models = _suggested(raters, suggestions) if suggestions is not None else None
    report = agreement_report(raters, models=models, resamples=resamples, seed=seed, track=progress)
    if out is not None:
        for path in write_report(report, out, examples=examples):
            err_console.print(f"wrote {path}", highlight=False, markup=False)
    if json_out:
        typer.echo(json.dumps(report.to_dict(with_text=False), indent=2))
    elif out is None:
        spans = report.pooled["spans"]
        err_console.print(
            f"span F1 exact {spans['exact']['f1']:.3f}, relaxed {spans['relaxed']['f1']:.3f} "
            "(pooled over pairs); use --out DIR for the full report",
            highlight=False,
        )


def _suggested(raters: dict[str, list[Any]], project: str) -> dict[str, list[Any]]:
    """Each model version's logged suggestions for the raters' notes (matched by text hash)."""
    from recommender.agreement.suggested import suggestion_raters
    from recommender.settings import load_settings
    from recommender.store import CorrectionStore
    from recommender.store.suggestions import SuggestionLog

    settings = load_settings()
    assert settings.database_url is not None  # filled in by Settings
    store = CorrectionStore(settings.database_url)
    try:
        logged = SuggestionLog(store.engine).suggestions(None if project == "all" else project)
    finally:
        store.close()
    models = suggestion_raters(logged, raters)
    found = ", ".join(f"{m} ({len(d)} notes)" for m, d in models.items()) or "none for these notes"
    err_console.print(f"suggestions of {project}: {found}", highlight=False, markup=False)
    return models
