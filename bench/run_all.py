"""Run every CPU benchmark in turn (`make bench`), each as bench/README.md documents it: the encoder;
the service on the trained encoder (one process, then replicas under load); correction-to-promotion;
what each first-run seed gives; the model families side by side; constrained against free decoding,
the generation engine and the RE analysis on the LLaMA just trained; short LLaMA runs that try
the RE levers (an RE-weighted mix, a higher rank); the LLaMA served beside the
encoder (precompute); active learning with the encoder learner; the agreement-aware training rules;
two torch processes sharing the cores. Each prints its own table and writes
bench/results/<name>.json. Not here: bench/gpu_check.sh (needs a CUDA GPU).

On 2 CPU cores this takes more than a day: the LLaMA's full-data run is about five hours (resumable:
rerun and it goes on from its checkpoint), the RE levers about three, active learning with the encoder
learner about two."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
ENCODER_MODEL = RESULTS / "encoder_model"
MODELS = RESULTS / "models"  # bench_models.py's families: bert/ and llama/


def run(script: str, *args: str) -> None:
    print(f"\n== {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(BENCH / script), *args], check=True)


def main() -> None:
    run("bench_encoder.py", "--out", str(RESULTS / "encoder.json"), "--model-out", str(ENCODER_MODEL))
    run("bench_service.py", "--model", str(ENCODER_MODEL), "--out", str(RESULTS / "service.json"))
    run("bench_load.py", "--model", str(ENCODER_MODEL), "--out", str(RESULTS / "load.json"))
    run("bench_corpus.py", "--model", str(ENCODER_MODEL), "--out", str(RESULTS / "corpus.json"))
    run("bench_retraining.py", "--epochs", "3", "--out", str(RESULTS / "retraining.json"))
    run("bench_seed.py", "--out", str(RESULTS / "seed.json"))
    run("bench_models.py", "--families", "bert", "llama", "--models", str(MODELS))
    llama = str(MODELS / "llama")
    run("bench_constrained.py", "--model", llama, "--dev-notes", "2")
    run("bench_llama_engine.py", "--model", llama, "--notes", "1", "--prompts", "0")
    run("bench_re_analysis.py", "--model", llama)
    run("bench_re_levers.py")
    run(
        "bench_precompute.py", "--encoder", str(MODELS / "bert"), "--llama", llama,
        "--requests", "48", "--clients", "4", "16",
    )  # fmt: skip
    run("bench_active_learning.py", "--learner", "encoder", "--batch-notes", "10", "--threads", "1")
    run("bench_agreement_rule.py", "--seeds", "3")
    run("bench_cores.py")


if __name__ == "__main__":
    main()
