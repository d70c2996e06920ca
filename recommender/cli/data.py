"""Data commands: convert, schema, corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from recommender import corpora
from recommender.cli.common import console, err_console, progress
from recommender.formats import FORMATS, detect_format, get_format, read_documents, write_documents

commands = typer.Typer()  # this module's commands, loaded by the root on first use

FormatOpt = Annotated[str | None, typer.Option("--from", help=f"input format: {', '.join(FORMATS)}")]


@commands.command()
def convert(
    src: Annotated[Path, typer.Argument(help="input folder or file")],
    dst: Annotated[Path, typer.Argument(help="output folder or file")],
    from_: FormatOpt = None,
    to: Annotated[str, typer.Option("--to", help=f"output format: {', '.join(FORMATS)}")] = "brat",
) -> None:
    """Convert annotated notes between brat, xmi, labelstudio, markup, bio and jsonl."""
    fmt_in = from_ or detect_format(src)
    get_format(to)
    docs = read_documents(src, fmt_in)
    write_documents(progress(docs, f"writing {to}", total=len(docs)), dst, to)
    err_console.print(f"converted {len(docs)} notes from {fmt_in} to {to}: {dst}")


@commands.command()
def schema(
    out: Annotated[Path, typer.Option(help="folder to write the generated artifacts to")] = Path(
        "annotation_guidelines"
    ),
) -> None:
    """Regenerate the guideline artifacts (Label Studio config, INCEpTION type system and tag sets)."""
    from recommender.guidelines import write_artifacts

    for path in write_artifacts(out):
        err_console.print(f"wrote {path}")


corpus_app = typer.Typer(help="List known corpora and fetch the public Kiwi corpus.", no_args_is_help=True)
commands.add_typer(corpus_app, name="corpus")


@corpus_app.command("list")
def corpus_list() -> None:
    """List the corpora this installation knows, and whether each is present."""
    table = Table("name", "description", "location", "present")
    for c in corpora.known_corpora():
        present = Path(c.location).is_dir() if not c.location.startswith("http") else False
        table.add_row(c.name, c.description, c.location, "yes" if present else "no")
    console.print(table)


@corpus_app.command("fetch")
def corpus_fetch(
    out: Annotated[Path, typer.Argument(help="folder to write the brat notes to")],
    split: Annotated[str, typer.Option(help=f"one of: {', '.join(corpora.KIWI_SPLITS)}")] = "train",
) -> None:
    """Download the public MTSamples Kiwi corpus (train split by default), checksums checked; needs
    internet (KIWI_CORPUS_API points at a mirror)."""
    from recommender.settings import load_settings

    got = corpora.fetch_kiwi(out, split, api=load_settings().corpus_api)
    for line in (
        f"fetched {got.notes} notes into {out} (checksums in {got.manifest.name})",
        f"licence: {got.licence}",
        f"cite: {corpora.KIWI_CITATION}",
    ):
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
