"""The RE constraint with and without guideline 3.1.3's entity rule, on validation notes.

Run: ``python bench/bench_entity_rule.py --model DIR [--snapshot DIR/snapshots/step-NNNNN] [--notes 6]``.

Copy-or-tag decoding of an RE prompt knows the main entity's words and lets only bodyloc, course and
severity tag over them (``OutputLanguage.entity``). This scores one LLaMA (a finished model folder, or
a snapshot of a run) on the first ``--notes`` validation notes by id, relations with the gold entities
given, once with the rule and once with the entity left out of the constraint, everything else equal.
Validation notes, not development ones: the rule is a choice, and choices are made where the reported
figures never look (``recommender/splits.py``). Prints a table and writes JSON
(``bench/results/entity_rule.json``).
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench_learning_curve import snapshot_extractor

from recommender import corpora
from recommender.evaluation import evaluate
from recommender.evaluation.scorer import entities_only
from recommender.extractors import load_extractor
from recommender.extractors.llama import task
from recommender.formats import brat

RESULTS = Path(__file__).resolve().parent / "results"


def without_entity(unit: task.Unit) -> task.OutputLanguage:
    return task.OutputLanguage(unit.source, unit.labels)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a kiwi.llama.v1 model folder (or a run's)")
    ap.add_argument("--snapshot", type=Path, help="score this snapshot of the run instead of its model")
    ap.add_argument("--notes", type=int, default=6, help="validation notes to score (the first N by id)")
    ap.add_argument("--out", type=Path, default=RESULTS / "entity_rule.json")
    args = ap.parse_args()
    if not corpora.SHARED_MTSAMPLES.is_dir():
        raise SystemExit(
            f"error: {corpora.SHARED_MTSAMPLES} is absent: the benchmark scores the shared notes"
        )
    train, _ = corpora.split_documents(brat.read(corpora.SHARED_MTSAMPLES))
    _, validation = corpora.validation_split(train)
    gold = sorted(validation, key=lambda d: d.id)[: args.notes]
    model = snapshot_extractor(args.model, args.snapshot) if args.snapshot else load_extractor(args.model)
    with_rule = task.Unit.language
    runs: dict[str, Any] = {}
    for name, language in (("entity rule", with_rule), ("no entity rule", property(without_entity))):
        task.Unit.language = language  # type: ignore[method-assign]
        started = time.perf_counter()
        pred = model.predict([entities_only(d) for d in gold], entities_given=True)
        re = evaluate(gold, pred, re_pred=pred).to_dict()["re"]
        runs[name] = {
            kind: {k: round(re[kind][k], 4) for k in ("precision", "recall", "f1", "tp", "fp", "fn")}
            for kind in ("exact", "relaxed")
        }
        runs[name]["drops"] = dict(sum((Counter(p.drops) for p in pred), Counter()))
        runs[name]["seconds"] = round(time.perf_counter() - started, 1)
    task.Unit.language = with_rule  # type: ignore[method-assign]
    report = {
        "model": str(args.snapshot or args.model),
        "validation_notes": [d.id for d in gold],
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\n{report['model']}, RE with gold entities, {len(gold)} validation notes")
    print("| constraint | RE exact P | R | F1 | tp | fp | fn | dropped |")
    print("|---|---|---|---|---|---|---|---|")
    for name, run in runs.items():
        e = run["exact"]
        drops = ", ".join(f"{k} {v}" for k, v in sorted(run["drops"].items())) or "none"
        print(
            f"| {name} | {e['precision']:.3f} | {e['recall']:.3f} | {e['f1']:.3f} | {e['tp']} | {e['fp']} "
            f"| {e['fn']} | {drops} |"
        )
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
