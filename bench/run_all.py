"""Run every benchmark in turn (`make bench`): encoder, then the service on the trained encoder (one
process, then replicas under load), then correction-to-promotion, then what each first-run seed
gives. Each prints its own table and writes bench/results/<name>.json."""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
ENCODER_MODEL = RESULTS / "encoder_model"


def run(script: str, *args: str) -> None:
    print(f"\n== {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(BENCH / script), *args], check=True)


def main() -> None:
    run("bench_encoder.py", "--out", str(RESULTS / "encoder.json"), "--model-out", str(ENCODER_MODEL))
    run("bench_service.py", "--model", str(ENCODER_MODEL), "--out", str(RESULTS / "service.json"))
    run("bench_load.py", "--model", str(ENCODER_MODEL), "--out", str(RESULTS / "load.json"))
    run("bench_corpus.py", "--model", str(ENCODER_MODEL), "--out", str(RESULTS / "corpus.json"))
    run("bench_retraining.py", "--out", str(RESULTS / "retraining.json"))
    run(
        "bench_llama_engine.py", "--notes", "1", "--prompts", "0", "--out", str(RESULTS / "llama_engine.json")
    )
    run(
        "bench_models.py", "--dev-notes", "4", "--train-dev-notes", "0", "--out", str(RESULTS / "models.json")
    )
    run("bench_seed.py", "--out", str(RESULTS / "seed.json"))


if __name__ == "__main__":
    main()
