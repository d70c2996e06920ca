"""bench/sidebyside.py: warm-ups before any timing, the order rotated every repeat, medians."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from sidebyside import side_by_side


def test_every_side_is_warmed_first_then_the_order_alternates() -> None:
    calls: list[str] = []

    def side(name: str) -> object:
        return lambda: calls.append(name) or name

    sides = {"plain": side("plain"), "engine": side("engine")}
    warm = {"plain": side("warm plain"), "engine": side("warm engine")}
    outputs, seconds = side_by_side(sides, 4, warm)
    assert calls == ["warm plain", "warm engine", "plain", "engine", "engine", "plain", "plain", "engine",
                     "engine", "plain"]  # fmt: skip
    assert outputs == {"plain": "plain", "engine": "engine"}
    assert {k: len(v) for k, v in seconds.items()} == {"plain": 4, "engine": 4}


def test_three_sides_take_every_position_and_a_side_without_warm_up_is_refused() -> None:
    calls: list[str] = []
    sides = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    side_by_side(sides, 3, {n: lambda: None for n in "abc"})
    assert calls == list("abcbcacab")
    with pytest.raises(ValueError, match="warm-up for every side"):
        side_by_side(sides, 1, {"a": lambda: None})
