"""The training checkpoint: a run killed while it saves keeps one whole checkpoint to resume from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recommender.extractors import checkpoint
from recommender.extractors.checkpoint import STATE_FILE, load_checkpoint, save_checkpoint

RUN = {"config": {"lr": 1e-4, "checkpoint_steps": 10}, "data": "abc"}


def _state(step: int) -> dict[str, object]:
    return {"run": RUN, "step": step, "weights": torch.full((4, 4), float(step))}


def test_a_save_replaces_the_checkpoint_and_loads_for_the_same_run_only(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, _state(10))
    save_checkpoint(folder, _state(20))
    saved = load_checkpoint(folder, RUN)
    assert saved is not None and saved["step"] == 20
    assert torch.equal(saved["weights"], torch.full((4, 4), 20.0))
    assert sorted(p.name for p in folder.iterdir()) == [STATE_FILE]
    # how often it saves changes nothing the run learns; the learning rate does
    other_steps = {**RUN, "config": {"lr": 1e-4, "checkpoint_steps": 5}}
    assert load_checkpoint(folder, other_steps, ("checkpoint_steps",)) is not None
    assert load_checkpoint(folder, {**RUN, "config": {"lr": 2e-4, "checkpoint_steps": 10}}) is None


def test_a_run_killed_before_its_save_commits_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, _state(10))

    def killed(*args: object) -> None:  # the process dies with the new state written but not committed
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, _state(20))
    monkeypatch.undo()
    saved = load_checkpoint(folder, RUN)
    assert saved is not None and saved["step"] == 10
    save_checkpoint(folder, _state(30))  # the next save writes over the half-done one
    saved = load_checkpoint(folder, RUN)
    assert saved is not None and saved["step"] == 30
    assert sorted(p.name for p in folder.iterdir()) == [STATE_FILE]
