"""A training run's checkpoint, shared by the families' trainers: written atomically into
``out_dir/checkpoint/state.pt``, taken up again only by the same run, and the run's wall time, CPU
time and peak memory summed over every session it took."""

from __future__ import annotations

import logging
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain data) as the checkpoint in ``folder``. The file is written
    beside the previous one and renamed over it, so a run killed at any moment (a session's end) keeps
    one whole checkpoint: removing the old one first left a moment with none, and hours to redo."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (STATE_FILE + ".tmp")
    with tmp.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / STATE_FILE)


def load_checkpoint(
    folder: Path, run: dict[str, Any], not_learnt: tuple[str, ...] = ()
) -> dict[str, Any] | None:
    """The checkpoint in ``folder`` when it was written by ``run`` (its ``config``, data and base), else
    None; one of another run is left alone and said so. Config fields in ``not_learnt`` (where and how
    often the run saves) may differ: they change nothing the run learns."""
    if not (folder / STATE_FILE).is_file():
        return None
    saved: dict[str, Any] = torch.load(folder / STATE_FILE, weights_only=False)
    if _learnt(saved.get("run", {}), not_learnt) != _learnt(run, not_learnt):
        log.warning("ignoring %s: it is of another run (settings, data or base differ)", folder)
        return None
    return saved


def _learnt(run: dict[str, Any], not_learnt: tuple[str, ...]) -> dict[str, Any]:
    config = {k: v for k, v in run.get("config", {}).items() if k not in not_learnt}
    return {**run, "config": config}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: kB


class RunClock:
    """Wall seconds, CPU seconds and peak memory of a run, this session's added to earlier sessions'."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds, self.cpu_seconds, self.peak_rss_mb = 0.0, 0.0, 0

    def resume(self, saved: dict[str, Any]) -> None:
        """Count the earlier sessions recorded in a checkpoint's ``saved`` state."""
        self.seconds = saved.get("seconds", 0.0)
        self.cpu_seconds = saved.get("cpu_seconds", 0.0)
        self.peak_rss_mb = saved.get("peak_rss_mb", 0)

    def state(self) -> dict[str, Any]:
        """All sessions so far, as a checkpoint records them."""
        return {
            "seconds": self.seconds + time.perf_counter() - self.started,
            "cpu_seconds": self.cpu_seconds + cpu_seconds(),
            "peak_rss_mb": max(self.peak_rss_mb, peak_rss_mb()),
        }

    def metrics(self) -> dict[str, Any]:
        """All sessions of the run, as a model's metrics record them."""
        s = self.state()
        return {
            "train_seconds": round(s["seconds"], 1),
            "train_cpu_seconds": round(s["cpu_seconds"], 1),
            "train_peak_rss_mb": s["peak_rss_mb"],
        }
