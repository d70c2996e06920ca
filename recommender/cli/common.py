"""Small helpers shared by the CLI modules."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import track

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """A progress bar on stderr, so stdout stays clean for --json."""
    yield from track(items, description=description, total=total, console=err_console, transient=True)


def drops_line(drops: dict[str, int]) -> str:
    """One line of what a model produced but could not place in the notes, by kind."""
    parts = ", ".join(f"{n} {kind}" for kind, n in drops.items())
    return f"model output dropped (could not be placed in the notes): {parts}"
