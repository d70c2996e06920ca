"""What a first model can do: each seed corpus ``make serve`` may train on, scored on the 16 MTSamples
development notes of ``../shared`` (the documented split).

Run: ``python bench/bench_seed.py [--encoder synthetic] [--epochs N] [--out bench/results/seed.json]``.
Seeds: ``sample`` (the 4 hand-written notes, the old offline seed), ``synthetic`` (those plus the
generated corpus of ``recommender.synthetic``, the offline seed now) and ``mtsamples`` (the 80 training
notes of the split, what `kiwi corpus fetch` gives online). Each trains on its own development split's
training part, as the bootstrap does (``corpora.development_split``). The lexicon model trains on every
seed; the encoder (minutes to hours on a CPU) only on the seeds named by ``--encoder``.
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from recommender import corpora
from recommender.document import Document
from recommender.evaluation import evaluate_extractor
from recommender.extractors import load_extractor
from recommender.formats import brat
from recommender.retraining import get_trainer
from recommender.retraining.training_data import SYNTHETIC_EPOCHS

SEEDS = ("sample", "synthetic", "mtsamples")


def seed_notes(name: str, shared_train: list[Document]) -> list[Document]:
    if name == "sample":
        return corpora.load_sample()
    if name == "synthetic":
        return corpora.synthetic_seed()
    return shared_train


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", nargs="*", default=["synthetic"], choices=SEEDS)
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"encoder epochs (default: the bootstrap's: {SYNTHETIC_EPOCHS} on synthetic; on the others the "
        "encoder's own defaults, early stopping on the validation notes)",
    )
    ap.add_argument("--out", type=Path, default=Path("bench/results/seed.json"))
    args = ap.parse_args()
    if not corpora.SHARED_MTSAMPLES.is_dir():
        print(f"skipped: {corpora.SHARED_MTSAMPLES} is absent (the development notes)", file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    shared_train, dev = corpora.split_documents(brat.read(corpora.SHARED_MTSAMPLES))
    rows = []
    runs = [(s, "kiwi.lexicon.v1") for s in SEEDS] + [(s, "kiwi.encoder.v1") for s in args.encoder]
    for seed, extractor in runs:
        train, own_dev = corpora.development_split(seed_notes(seed, shared_train))
        trainer = get_trainer(extractor)
        # as the bootstrap trains: a fixed count on the template notes, else the family's own default
        epochs = args.epochs if args.epochs is not None else SYNTHETIC_EPOCHS if seed == "synthetic" else None
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            trainer(train, own_dev, Path(tmp), None, epochs=epochs)
            seconds = time.perf_counter() - t0
            ev = evaluate_extractor(load_extractor(Path(tmp)), dev, resamples=1000).to_dict()
        row = {
            "seed": seed,
            "extractor": extractor,
            "train_notes": len(train),
            "own_dev_notes": len(own_dev),
            "train_seconds": round(seconds, 1),
            "epochs": epochs if extractor != "kiwi.lexicon.v1" else None,
        }
        for task in ("ner", "re", "spans"):
            ex = ev[task]["exact"]
            row[task] = {"f1": round(ex["f1"], 4), "ci": [round(x, 4) for x in ex["ci"]["f1"]]}
        rows.append(row)
        print(
            f"{seed:10s} {extractor:16s} {len(train):4d} notes {seconds:8.1f} s  "
            + "  ".join(
                f"{t.upper()} {row[t]['f1']:.3f} ({row[t]['ci'][0]:.3f}-{row[t]['ci'][1]:.3f})"
                for t in ("ner", "re", "spans")
            ),
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"dev_notes": len(dev), "rows": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
