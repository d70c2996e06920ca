"""The ``kiwi`` command line. Each area lives in its own module with its own ``commands``; the root
imports a command's module only when that command runs (or its ``--help`` is asked for), so ``kiwi
--help`` answers without importing any of them. ``COMMANDS`` lists them, in the order ``--help``
shows, with the first paragraph of their help (``tests/test_cli_start.py`` keeps it in step)."""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from recommender.cores import apply_process_policy
from recommender.errors import ConfigError, KiwiError

# Before any command module imports torch: OpenMP reads its environment once (recommender/cores.py).
# A bad value is reported by main() in one line, as every bad setting is.
_policy_error: ConfigError | None = None
try:
    apply_process_policy()
except ConfigError as e:
    _policy_error = e


@dataclass(frozen=True)
class Command:
    module: str  # defines it on its ``commands``
    help: str  # the first paragraph of its help, for the root's --help


COMMANDS: dict[str, Command] = {
    "agreement": Command(
        "recommender.cli.agreement",
        "Agreement between annotators: pairwise F1, Cohen's and Fleiss' kappa, Krippendorff's alpha.",
    ),
    "convert": Command(
        "recommender.cli.data",
        "Convert annotated notes between brat, xmi, labelstudio, markup, bio and jsonl.",
    ),
    "schema": Command(
        "recommender.cli.data",
        "Regenerate the guideline artifacts (Label Studio config, INCEpTION type system and tag sets).",
    ),
    "evaluate": Command(
        "recommender.cli.evaluate",
        "Score predictions against gold: NER, RE and all spans, exact and relaxed, with 95% intervals.",
    ),
    "compare": Command(
        "recommender.cli.evaluate",
        "Is A better than B? One-sided Wilcoxon rank-sum over paired bootstrap resamples (the paper's test).",
    ),
    "predict": Command("recommender.cli.models", "Pre-annotate notes with a trained model; deterministic."),
    "precompute": Command(
        "recommender.cli.precompute",
        "Compute a model's predictions ahead of the annotator into the prediction cache (KIWI_DATABASE_URL).",
    ),
    "serve": Command(
        "recommender.cli.serve",
        "Serve pre-annotations to INCEpTION (/inception/{name}/predict|train) and Label Studio.",
    ),
    "simulate": Command(
        "recommender.cli.simulate",
        "Replay annotation on CORPUS: from a seed set, each strategy picks the next notes, their gold is\n"
        "revealed, the learner retrains and is scored on the evaluation notes, until the budget is spent.\n"
        "Interrupted runs resume from their last round (run the same command again).",
    ),
    "corpus": Command("recommender.cli.data", "List known corpora and fetch the public Kiwi corpus."),
    "train": Command("recommender.cli.models", "Train an extractor on an annotated corpus."),
    "models": Command("recommender.cli.models_admin", "List, promote and roll back model versions."),
}


def load_command(name: str) -> click.Command:
    """The command ``name``, importing its module."""
    group = typer.main.get_group(importlib.import_module(COMMANDS[name].module).commands)
    return group.commands[name]


class _LazyGroup(TyperGroup):
    """Lists ``COMMANDS`` from the table; imports a command's module when it is resolved to run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name in COMMANDS:  # listed in --help: the name and help are enough
            return click.Command(cmd_name, help=COMMANDS[cmd_name].help)
        return None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] in COMMANDS and args[0] not in self.commands:
            self.commands[args[0]] = load_command(args[0])
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="kiwi",
    help="Kiwi Recommender: clinical entities, modifiers and relations for INCEpTION and Label Studio.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=_LazyGroup,
)


@app.callback()
def _root() -> None:
    pass  # makes ``app`` a group of the lazily loaded commands


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The project's own progress and results (epoch losses, dev scores) are what a user waits for.
    logging.getLogger("recommender").setLevel(logging.INFO)
    try:
        if _policy_error is not None:
            raise _policy_error
        app()
    except KiwiError as e:
        # markup=False: messages put offending values in [brackets], which rich would eat as tags.
        Console(stderr=True).print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
