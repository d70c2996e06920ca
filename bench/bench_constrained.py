"""Copy-or-tag constrained decoding against free generation: what the constraint does to F1 and speed.

Run: ``python bench/bench_constrained.py --model bench/results/models/llama [--dev-notes 4]``.
Scores one LLaMA model folder on the first ``--dev-notes`` development notes of the fixed split twice,
as ``kiwi evaluate`` does (NER from raw text, RE with the gold entities given), once with the
constraint (the default) and once decoding freely, everything else equal. Free output goes through
the same parser, so what the constraint prevents shows up as drops (unaligned or unknown spans) and
lost F1. Prints a table and writes JSON (default ``bench/results/constrained.json``).
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results"


def score(model: Any, dev: list[Any], batch_size: int) -> dict[str, Any]:
    from recommender.cli.common import progress
    from recommender.evaluation.scorer import evaluate, predict_for_scoring

    started = time.perf_counter()
    pred, re_pred, speed = predict_for_scoring(model, dev, batch_size=batch_size, track=progress)
    ev = evaluate(dev, pred, re_pred=re_pred, resamples=1000, speed=speed).to_dict()
    return {
        "ner_exact_f1": round(ev["ner"]["exact"]["f1"], 4),
        "ner_exact_ci": [round(x, 4) for x in ev["ner"]["exact"]["ci"]["f1"]],
        "ner_relaxed_f1": round(ev["ner"]["relaxed"]["f1"], 4),
        "re_exact_f1": round(ev["re"]["exact"]["f1"], 4),
        "spans_exact_f1": round(ev["spans"]["exact"]["f1"], 4),
        "drops": ev["drops"],
        "seconds_per_note": round(speed["seconds_per_note"], 2),
        "re_seconds_per_note": round(speed["re_seconds_per_note"], 2),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a kiwi.llama.v1 model folder")
    ap.add_argument("--dev-notes", type=int, default=4, help="first N development notes by id")
    ap.add_argument("--batch-size", type=int, default=16, help="notes per prediction call")
    ap.add_argument("--out", type=Path, default=RESULTS / "constrained.json")
    args = ap.parse_args()

    import torch

    from recommender.corpora import SHARED_MTSAMPLES, split_documents
    from recommender.extractors import load_extractor
    from recommender.formats import brat

    if not SHARED_MTSAMPLES.is_dir():
        raise SystemExit(f"error: {SHARED_MTSAMPLES} is absent: the benchmark needs the MTSamples notes")
    torch.set_num_threads(2)
    model = load_extractor(args.model)
    if not hasattr(model, "configure") or "constrained" not in model.config.to_dict():
        raise SystemExit(f"error: {args.model} is not a LLaMA model folder (kiwi.llama.v1)")
    _, dev = split_documents(brat.read(SHARED_MTSAMPLES))
    dev = sorted(dev, key=lambda d: d.id)[: args.dev_notes]
    report: dict[str, Any] = {"model": model.version, "dev_notes": len(dev), "runs": {}}
    for name, constrained in (("constrained", True), ("free", False)):
        print(f"== {name} decoding", flush=True)
        model.configure(constrained=constrained)
        report["runs"][name] = score(model, dev, args.batch_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    cols = ("ner_exact_f1", "ner_relaxed_f1", "re_exact_f1", "spans_exact_f1", "seconds_per_note")
    print(f"\n{model.version} on {len(dev)} development notes")
    print(f"| decoding | {' | '.join(cols)} | drops |")
    print(f"|---|{'---|' * len(cols)}---|")
    for name, run in report["runs"].items():
        drops = ", ".join(f"{k} {v}" for k, v in sorted(run["drops"].items())) or "none"
        print(f"| {name} | {' | '.join(str(run[c]) for c in cols)} | {drops} |")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
