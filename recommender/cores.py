"""How a process shares the host's cores with its neighbours: OpenMP's waiting policy, set before
the runtime starts, and a thread budget for each role of the service.

Two torch processes doing the same LoRA step on the same two cores each ran 12x slower with OpenMP's
default waiting (threads spin for a core the other process holds), and 1.3-1.4x slower with sleeping
waiters (``PASSIVE``) or one thread each. GNU OpenMP, which torch ships, reads its environment once,
when torch is imported: every entry point (the ``kiwi`` command, the test configuration, the
benchmarks) calls :func:`apply_process_policy` before anything imports torch, and child processes
inherit the variables it sets.

No torch import here: threads are set only where torch is already loaded (nothing else needs them).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recommender.settings import ProcessSettings, Settings, load_process_settings

log = logging.getLogger(__name__)

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in cores (a container's ``--cpus``), None if unlimited."""
    try:  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def available_cores(root: Path = CGROUP) -> int:
    """Cores this process may run on: its CPU affinity, capped by its cgroup's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


@dataclass(frozen=True)
class CoreBudget:
    """Threads of one process and how its roles divide them (shown on the status page)."""

    cores: int  # available to the process (affinity and cgroup quota)
    threads: int  # the process's OpenMP/torch threads
    wait_policy: str  # OMP_WAIT_POLICY: PASSIVE (sleep when idle) or ACTIVE (spin)
    lanes: int  # model calls of requests at once
    lane_threads: int  # threads of one request's model call
    trainer_threads: int  # threads of a training job
    precompute_threads: int  # threads of the background precompute worker

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def process_threads(settings: ProcessSettings) -> int:
    return settings.threads or available_cores()


def core_budget(settings: Settings) -> CoreBudget:
    """What each role of a ``kiwi serve`` process may use. On one host requests, a training job and
    the precompute worker divide the process's threads instead of each taking all of them; a
    trainer-only process gives all of them to training."""
    threads = process_threads(settings)
    half = max(1, threads // 2)
    return CoreBudget(
        cores=available_cores(),
        threads=threads,
        wait_policy=settings.omp_wait_policy.upper(),
        lanes=settings.predict_lanes,
        lane_threads=max(1, threads // settings.predict_lanes),
        trainer_threads=settings.trainer_threads or (threads if settings.role == "trainer" else half),
        precompute_threads=settings.precompute_threads or half,
    )


def openmp_environment(settings: ProcessSettings) -> dict[str, str]:
    """The variables the OpenMP runtime (and MKL) read at start, as ``settings`` say."""
    threads = str(process_threads(settings))
    return {
        "OMP_WAIT_POLICY": settings.omp_wait_policy.upper(),
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }


_applied: dict[str, str] | None = None  # what this process set last


def apply_process_policy(settings: ProcessSettings | None = None) -> dict[str, str]:
    """Put the process policy into this process's environment (children inherit it) and, where
    torch is already loaded, its thread count. Returns the variables set."""
    settings = settings or load_process_settings()
    global _applied
    env = openmp_environment(settings)
    os.environ.update(env)
    again, _applied = _applied == env, env  # importing the CLI as a library applies it once more
    if "torch" in sys.modules and not again:
        # Too late for the waiting policy: the OpenMP runtime read its environment at import.
        log.warning(
            "torch was imported before the process policy was set: OMP_WAIT_POLICY [%s] does not apply "
            "to this process",
            env["OMP_WAIT_POLICY"],
        )
        set_torch_threads(int(env["OMP_NUM_THREADS"]))
    return env


def set_torch_threads(threads: int) -> None:
    """Torch's intra-op threads for the calling thread (OpenMP keeps the count per thread); a no-op
    in a process that has not loaded torch."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


__all__ = [
    "CoreBudget",
    "apply_process_policy",
    "available_cores",
    "cgroup_cpu_limit",
    "core_budget",
    "openmp_environment",
    "set_torch_threads",
]
