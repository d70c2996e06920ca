"""Benchmark of the encoder extractor on the fixed MTSamples split (train 80 notes, dev 16 notes).

Run: ``python bench/bench_encoder.py [--epochs N] [--out bench/results/encoder.json]``. Trains with
``train_encoder`` (the ``kiwi train bert`` defaults), scores NER, RE (main entities given) and all spans
end to end with the project scorer (``recommender.evaluation``), and times the whole inference pipeline
on 2 CPU threads with the encoder in bfloat16 autocast, int8 dynamic quantization and fp32.
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from recommender.corpora import SHARED_MTSAMPLES, split_documents
from recommender.document import Document
from recommender.extractors.encoder import EncoderConfig, train_encoder
from recommender.extractors.encoder.extractor import EncoderExtractor, resolve_precision
from recommender.extractors.encoder.training import evaluate_dev
from recommender.formats import brat


def time_predict(ex: EncoderExtractor, docs: list[Document], repeats: int) -> float:
    """Median seconds per note over ``repeats`` passes of the whole pipeline (tokenize, encode, decode)."""
    bare = [d.without_annotations() for d in docs]
    ex.predict(bare[:2])  # warm-up: builds the inference copy
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        ex.predict(bare)
        runs.append((time.perf_counter() - t) / len(bare))
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=EncoderConfig.epochs)
    ap.add_argument("--lr", type=float, default=EncoderConfig.lr)
    ap.add_argument("--head-lr", type=float, default=EncoderConfig.head_lr)
    ap.add_argument("--batch-size", type=int, default=EncoderConfig.batch_size)
    ap.add_argument("--base-model", default=EncoderConfig.base_model)
    ap.add_argument("--encoder-layers", type=int, default=EncoderConfig.encoder_layers)
    ap.add_argument("--corpus", type=Path, default=SHARED_MTSAMPLES)
    ap.add_argument("--model-out", type=Path, default=Path("bench/results/encoder_model"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/encoder.json"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    train, dev = split_documents(brat.read(args.corpus))
    config = EncoderConfig(
        base_model=args.base_model,
        encoder_layers=args.encoder_layers,
        epochs=args.epochs,
        lr=args.lr,
        head_lr=args.head_lr,
        batch_size=args.batch_size,
    )
    t0 = time.perf_counter()
    ex = train_encoder(train, dev, config, args.model_out)
    train_s = time.perf_counter() - t0

    ex = EncoderExtractor.load(args.model_out)  # measure what `kiwi predict` would load
    results: dict[str, dict] = {}
    for precision in ("bf16", "int8", "fp32"):
        ex.config = replace(ex.config, precision=precision)
        ex.invalidate()
        scores = evaluate_dev(ex, dev, resamples=1000)
        results[precision] = {
            "scores": scores,
            "s_per_note": round(time_predict(ex, dev, args.repeats), 4),
        }
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens = sum(len(d.text.split()) for d in dev) / len(dev)
    report = {
        "model": ex.version,
        "base_model": config.base_model,
        "train_notes": len(train),
        "dev_notes": len(dev),
        "dev_mean_whitespace_tokens": round(tokens),
        "best_epoch": ex.info.metrics.get("best_epoch"),
        "history": ex.info.metrics.get("history"),
        "train_seconds": round(train_s, 1),
        "torch_threads": torch.get_num_threads(),
        "auto_precision": resolve_precision("auto"),
        "peak_rss_mb": round(peak_mb),
        "results": results,
        "note": "2 CPU cores shared with other jobs: timings are noisy (median of repeats).",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    print(
        f"model {ex.version}  base {config.base_model}  best epoch {report['best_epoch']}  "
        f"precision auto = {report['auto_precision']} here"
    )
    header = ("variant", "NER exact", "NER relaxed", "RE exact", "spans e2e", "s/note")
    print(f"{header[0]:<8}" + "".join(f"{h:>12}" for h in header[1:]))
    for name, r in results.items():
        s = r["scores"]
        row = (
            s["ner"]["exact"]["f1"],
            s["ner"]["relaxed"]["f1"],
            s["re"]["exact"]["f1"],
            s["spans"]["exact"]["f1"],
            r["s_per_note"],
        )
        print(f"{name:<8}" + "".join(f"{v:>12.3f}" for v in row))
    print(f"training {train_s / 60:.1f} min, peak RSS {peak_mb:.0f} MB; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
