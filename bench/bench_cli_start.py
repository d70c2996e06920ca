"""How long ``kiwi --help`` and ``kiwi COMMAND --help`` take to answer (a fresh process each time).

Run: ``python bench/bench_cli_start.py [--repeat 7] [--root DIR] [--out bench/results/cli_start.json]``.
``--root`` is the checkout whose ``recommender`` package is timed (default: this one), so an older
checkout can be timed the same way for a before/after row. Each row is the median and the minimum of
``--repeat`` runs (wall clock and CPU seconds) of ``python -c "from recommender.cli import main;
main()" ... --help`` (the console script ``kiwi`` runs the same two lines). Target (issue 25): under 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [
    [],
    ["agreement"],
    ["convert"],
    ["evaluate"],
    ["predict"],
    ["precompute"],
    ["serve"],
    ["simulate"],
    ["corpus"],
    ["train"],
    ["train", "bert"],
    ["models"],
]


def time_help(root: Path, args: list[str], repeat: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU (user + system) seconds of each run: on a shared machine the CPU time is
    the steadier figure, the wall clock what a user waits."""
    env = os.environ | {"PYTHONPATH": str(root), "COLUMNS": "110"}
    cmd = [sys.executable, "-c", "from recommender.cli import main; main()", *args, "--help"]
    wall, cpu = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        # run in ``root``: ``python -c`` puts the working folder first on sys.path
        done = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
        wall.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} --help failed: {done.stderr[-500:]}")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cli_start.json"))
    args = parser.parse_args()
    rows = []
    print(f"{'command':<26} {'wall median s':>13} {'wall min s':>10} {'cpu median s':>12}")
    for command in COMMANDS:
        wall, cpu = time_help(args.root.resolve(), command, args.repeat)
        name = " ".join(["kiwi", *command, "--help"])
        row = {"command": name, "wall_median_s": statistics.median(wall), "wall_min_s": min(wall)}
        cpu_median = statistics.median(cpu)
        rows.append(row | {"cpu_median_s": cpu_median})
        print(f"{name:<26} {row['wall_median_s']:>13.2f} {row['wall_min_s']:>10.2f} {cpu_median:>12.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    body = {"root": str(args.root), "repeat": args.repeat, "cpus": os.cpu_count(), "rows": rows}
    args.out.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
