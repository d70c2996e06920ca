"""Small helpers shared by the CLI modules."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import track

from recommender.progress import reporting

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """A progress bar on stderr, so stdout stays clean for --json; where stderr is no terminal (docker
    logs, a service, CI) a line at least every 30 seconds with the step, the rate and an ETA."""
    if err_console.is_terminal:
        yield from track(items, description=description, total=total, console=err_console, transient=True)
    else:
        yield from reporting(items, description, total, _print_line)


def _print_line(line: str) -> None:
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def drops_line(drops: dict[str, int]) -> str:
    """One line of what a model produced but could not place in the notes, by kind."""
    parts = ", ".join(f"{n} {kind}" for kind, n in drops.items())
    return f"model output dropped (could not be placed in the notes): {parts}"
