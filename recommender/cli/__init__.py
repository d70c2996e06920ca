"""The ``kiwi`` command line. Each area lives in its own module and registers on ``app``."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

from recommender.cores import apply_process_policy
from recommender.errors import ConfigError, KiwiError

# Before any command module imports torch: OpenMP reads its environment once (recommender/cores.py).
# A bad value is reported by main() in one line, as every bad setting is.
_policy_error: ConfigError | None = None
try:
    apply_process_policy()
except ConfigError as e:
    _policy_error = e

app = typer.Typer(
    name="kiwi",
    help="Kiwi Recommender: clinical entities, modifiers and relations for INCEpTION and Label Studio.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Importing a command module registers its commands on ``app``.
from recommender.cli import agreement as _agreement  # noqa: E402,F401
from recommender.cli import data as _data  # noqa: E402,F401
from recommender.cli import evaluate as _evaluate  # noqa: E402,F401
from recommender.cli import models as _models  # noqa: E402,F401
from recommender.cli import models_admin as _models_admin  # noqa: E402,F401
from recommender.cli import precompute as _precompute  # noqa: E402,F401
from recommender.cli import serve as _serve  # noqa: E402,F401
from recommender.cli import simulate as _simulate  # noqa: E402,F401


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
