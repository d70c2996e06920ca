"""The LLaMA's learning curve: RE (and NER) F1 on the development notes against the examples seen.

Run: ``python bench/bench_learning_curve.py --model DIR [--notes 16] [--ner] [--out FILE.json]``.

A LLaMA training run keeps its adapter every ``SNAPSHOT_STEPS`` optimizer steps under
``DIR/snapshots/step-NNNNN/``. Each snapshot is served in a copy of the model folder, predicts the first
``--notes`` development notes with their gold entities given (the paper's RE mode; with ``--ner`` also
from raw text) and is scored. The examples seen at a step come from the run's own order (its seed,
data and settings in ``kiwi_model.json``), so the curve counts what that run trained on.
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from recommender import corpora
from recommender.evaluation import evaluate
from recommender.evaluation.scorer import entities_only
from recommender.extractors import load_extractor
from recommender.extractors.llama.extractor import LlamaExtractor
from recommender.extractors.llama.layout import ADAPTER_DIR, MERGED_DIR, SNAPSHOT_DIR
from recommender.extractors.llama.training import CHECKPOINT_DIR, examples_seen, training_set
from recommender.formats import brat


def snapshot_folder(model: Path, snapshot: Path, into: Path) -> Path:
    """A copy of the model folder whose adapter is ``snapshot`` (no merged weights: they are the final
    adapter's)."""
    skip = shutil.ignore_patterns(MERGED_DIR, SNAPSHOT_DIR, CHECKPOINT_DIR, ADAPTER_DIR)
    shutil.copytree(model, into, ignore=skip)
    shutil.copytree(snapshot, into / ADAPTER_DIR)
    return into


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a kiwi.llama.v1 model folder with snapshots/")
    ap.add_argument("--notes", type=int, default=16, help="development notes to score (the first N by id)")
    ap.add_argument("--ner", action="store_true", help="also NER from raw text (doubles the time)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/learning_curve.json"))
    args = ap.parse_args()
    if not corpora.SHARED_MTSAMPLES.is_dir():
        raise SystemExit(f"error: {corpora.SHARED_MTSAMPLES} is absent: the curve scores the shared notes")
    snapshots = sorted((args.model / SNAPSHOT_DIR).glob("step-*"))
    if not snapshots:
        raise SystemExit(f"error: [{args.model / SNAPSHOT_DIR}] holds no step-NNNNN snapshot")
    train, dev = corpora.split_documents(brat.read(corpora.SHARED_MTSAMPLES))
    fit, _ = corpora.validation_split(train)
    gold = sorted(dev, key=lambda d: d.id)[: args.notes]
    final = LlamaExtractor.load(args.model)
    encoded, _ = training_set(fit, final.config, final.tokenizer, final.templates)
    del final

    rows = []
    print(f"{'step':>6}{'NER seen':>10}{'RE seen':>9}{'RE F1':>8}{'NER F1':>8}{'s/note':>8}")
    for snap in snapshots:
        step = int(snap.name.removeprefix("step-"))
        with tempfile.TemporaryDirectory() as tmp:
            extractor = load_extractor(snapshot_folder(args.model, snap, Path(tmp) / "model"))
            started = time.perf_counter()
            re_pred = extractor.predict([entities_only(d) for d in gold], entities_given=True)
            pred = extractor.predict([d.without_annotations() for d in gold]) if args.ner else re_pred
            seconds = (time.perf_counter() - started) / len(gold)
        scores = evaluate(gold, pred, re_pred=re_pred).to_dict()
        seen = examples_seen(encoded, extractor.config, step)  # type: ignore[attr-defined]
        row = {
            "step": step,
            "ner_seen": seen["ner"],
            "re_seen": seen["re"],
            "re_exact_f1": scores["re"]["exact"]["f1"],
            "re_relaxed_f1": scores["re"]["relaxed"]["f1"],
            "ner_exact_f1": scores["ner"]["exact"]["f1"] if args.ner else None,
            "seconds_per_note": round(seconds, 2),
        }
        rows.append(row)
        ner = f"{row['ner_exact_f1']:.3f}" if args.ner else "-"
        print(
            f"{step:>6}{row['ner_seen']:>10}{row['re_seen']:>9}{row['re_exact_f1']:>8.3f}{ner:>8}"
            f"{row['seconds_per_note']:>8.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"model": str(args.model), "dev_notes": [d.id for d in gold], "rows": rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
