"""Fair timing of two or more ways of doing the same work: every side is warmed up first, then all run
in turn with the order rotated each repeat (so no side is always first on a cold machine or last on a
hot one), and each is reported by the median of its repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def side_by_side(
    sides: dict[str, Callable[[], T]],
    repeats: int,
    warm_up: dict[str, Callable[[], object]],
    sync: Callable[[], None] = lambda: None,
) -> tuple[dict[str, T], dict[str, list[float]]]:
    """(each side's output of its first timed run, each side's seconds per repeat). ``warm_up`` runs
    once per side before any timing; ``sync`` waits for queued device work (CUDA) around each run."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got [{repeats}]")
    if set(warm_up) != set(sides):
        raise ValueError(f"a warm-up for every side: {sorted(sides)}, got {sorted(warm_up)}")
    for name in sides:
        warm_up[name]()
    names = list(sides)
    outputs: dict[str, T] = {}
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            sync()
            started = time.perf_counter()
            out = sides[name]()
            sync()
            seconds[name].append(time.perf_counter() - started)
            outputs.setdefault(name, out)
    return outputs, seconds


def median(values: list[float]) -> float:
    return statistics.median(values)
