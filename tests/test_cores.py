"""The process policy (recommender/cores.py): OpenMP threads sleep instead of spinning, every entry
point sets it before torch starts, and the roles of one process divide its threads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support import tiny_bert, wait_healthy

from recommender.cores import available_cores, cgroup_cpu_limit, core_budget, openmp_environment
from recommender.corpora import SAMPLE_DIR
from recommender.settings import Settings, load_process_settings

KIWI = [sys.executable, "-c", "from recommender.cli import main; main()"]
POLICY = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT")


def bare_environment(**extra: str) -> dict[str, str]:
    """This environment without any OpenMP policy (as a user's shell has it), asking GNU OpenMP to
    print the settings it starts with."""
    env = {k: v for k, v in os.environ.items() if k not in POLICY and not k.startswith("KIWI_")}
    return env | {"OMP_DISPLAY_ENV": "verbose"} | extra


def started_policy(output: str) -> dict[str, str]:
    """What GNU OpenMP printed it started with (OMP_DISPLAY_ENV): name -> value."""
    found = {}
    for line in output.splitlines():
        name, sep, value = line.strip().partition(" = ")
        if sep and name in POLICY:
            found[name] = value.strip("'")
    return found


def test_cgroup_quota_caps_the_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    assert available_cores(tmp_path) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert available_cores(tmp_path) == len(os.sched_getaffinity(0))
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 0.5 and available_cores(v1) == 1


def test_the_roles_divide_the_threads(tmp_path: Path) -> None:
    shared = core_budget(Settings(model_dir=tmp_path, threads=4, predict_lanes=2))
    assert (shared.lane_threads, shared.trainer_threads, shared.precompute_threads) == (2, 2, 2)
    assert shared.wait_policy == "PASSIVE"
    trainer = core_budget(Settings(model_dir=tmp_path, threads=4, role="trainer"))
    assert trainer.trainer_threads == 4
    chosen = core_budget(Settings(model_dir=tmp_path, threads=2, trainer_threads=1, precompute_threads=1))
    assert (chosen.trainer_threads, chosen.precompute_threads) == (1, 1)
    default = core_budget(Settings(model_dir=tmp_path, threads=None))
    assert default.threads == available_cores()


def test_a_user_can_ask_for_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIWI_OMP_WAIT_POLICY", "active")
    monkeypatch.setenv("KIWI_THREADS", "3")
    env = openmp_environment(load_process_settings())
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    monkeypatch.delenv("KIWI_OMP_WAIT_POLICY")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the OpenMP variable itself is honoured too
    assert openmp_environment(load_process_settings())["OMP_WAIT_POLICY"] == "ACTIVE"


def test_a_bad_thread_count_is_one_line() -> None:
    run = subprocess.run(
        [*KIWI, "--help"], env=bare_environment(KIWI_THREADS="many"), capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "KIWI_THREADS" in run.stderr and "Traceback" not in run.stderr


def test_kiwi_commands_and_the_service_start_torch_with_the_policy(tmp_path: Path) -> None:
    # kiwi train: torch starts with sleeping waiters (spin count 0) and the process's thread count.
    model = tmp_path / "model"
    train = [*KIWI, "train", "bert", "--corpus", str(SAMPLE_DIR), "--out", str(model), "--epochs", "1"]
    train += ["--base-model", str(tiny_bert(tmp_path / "bert")), "--threads", "1"]
    train += ["--max-length", "64", "--window-overlap", "16"]  # within the tiny BERT's 128 positions
    run = subprocess.run(train, env=bare_environment(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    started = started_policy(run.stderr)
    assert started["OMP_WAIT_POLICY"] == "PASSIVE" and started["GOMP_SPINCOUNT"] == "0", started
    assert started["OMP_NUM_THREADS"] == str(available_cores())

    # kiwi serve (a service role) likewise, and its status page shows the budget.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve = [*KIWI, "serve", "--model", str(model), "--port", str(port), "--model-dir", str(tmp_path / "m")]
    env = bare_environment(KIWI_RETRAIN="false", KIWI_PRECOMPUTE="false")
    server = subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, server, 120)
        cores = httpx.get(f"{base}/status", timeout=10).json()["page"]["cores"]
        page = httpx.get(f"{base}/", timeout=10).text
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    started = started_policy(stderr)
    assert started["OMP_WAIT_POLICY"] == "PASSIVE" and started["GOMP_SPINCOUNT"] == "0", started
    assert cores["wait_policy"] == "PASSIVE" and cores["threads"] == available_cores()
    assert cores["lane_threads"] == max(1, available_cores() // cores["lanes"])
    assert "<h2>Cores</h2>" in page and "OpenMP waiting: passive" in page


def test_without_the_policy_torch_would_spin() -> None:
    """The check above can fail: torch imported on its own starts with OpenMP's spinning default."""
    run = subprocess.run(
        [sys.executable, "-c", "import torch"], env=bare_environment(), capture_output=True, text=True
    )
    assert started_policy(run.stderr)["GOMP_SPINCOUNT"] != "0"
