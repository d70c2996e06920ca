"""What the agreement-aware training rules (``KIWI_RETRAIN_AGREEMENT``) recover of what a noisy annotator
costs, simulated on the MTSamples notes of ``../shared``.

Run: ``python bench/bench_agreement_rule.py [--seeds 5] [--drop 0.4] [--mislabel 0.3] [--overlap 0.3]
[--extractor kiwi.lexicon.v1] [--out bench/results/agreement_rule.json]``.

The 80 training notes of the documented split are annotated by simulated annotators
(``recommender.active.annotators``): two careful ones who save the gold and, for 20% of the notes, a
noisy one who leaves out ``--drop`` of the spans and relabels ``--mislabel`` of the rest; ``--overlap``
of the notes get a second annotator. The versions go through the correction store and the retraining
loop's ``assemble`` with each rule (nothing held out), a model is trained on what comes out, and it is
scored on the 16 development notes (exact F1: NER from text, RE with the gold entities given, all
spans). ``clean`` is the same assignment with every annotator careful. Recovered: (rule - all) /
(clean - all) of the mean score (NER and RE, the promotion gate's figure).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from recommender import corpora
from recommender.active.annotators import annotated_pool
from recommender.active.simulate import score
from recommender.extractors import load_extractor
from recommender.formats import brat
from recommender.retraining import Corpora, get_trainer
from recommender.retraining.consensus import RULES
from recommender.retraining.training_data import assemble
from recommender.store import CorrectionStore

CONDITIONS = ("clean", *RULES)


def run(
    condition: str, train: list, dev: list, args: argparse.Namespace, seed: int, folder: Path
) -> dict[str, float]:
    pool = annotated_pool(
        train,
        noisy_share=args.noisy_share,
        overlap=args.overlap,
        drop=args.drop,
        mislabel=args.mislabel,
        seed=seed,
        noisy=condition != "clean",
    )
    store = CorrectionStore(f"sqlite:///{folder}/{condition}-{seed}.sqlite3")
    try:
        for doc in pool:
            c = doc.meta["correction"]
            store.add(c["project"], doc.id.split(":", 2)[-1], c["annotator"], "sim", doc)
        rule = "all" if condition == "clean" else condition
        data = assemble(store, Corpora(seed=[], dev=dev), 0.0, rule)  # type: ignore[arg-type]
    finally:
        store.close()
    out = folder / f"model-{condition}-{seed}"
    t0 = time.perf_counter()
    get_trainer(args.extractor)(data.train, dev, out, None, epochs=args.epochs)
    figures = score(load_extractor(out), dev)
    return {**figures, "train_docs": len(data.train), "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--noisy-share", type=float, default=0.2)
    ap.add_argument("--overlap", type=float, default=0.3)
    ap.add_argument("--drop", type=float, default=0.4)
    ap.add_argument("--mislabel", type=float, default=0.3)
    ap.add_argument("--extractor", default="kiwi.lexicon.v1")
    ap.add_argument("--epochs", type=int, default=None, help="encoder epochs")
    ap.add_argument("--out", type=Path, default=Path("bench/results/agreement_rule.json"))
    args = ap.parse_args()
    if not corpora.SHARED_MTSAMPLES.is_dir():
        print(f"skipped: {corpora.SHARED_MTSAMPLES} is absent (the MTSamples notes)", file=sys.stderr)
        return 0
    train, dev = corpora.split_documents(brat.read(corpora.SHARED_MTSAMPLES))
    results: dict[str, list[dict[str, float]]] = {c: [] for c in CONDITIONS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for condition in CONDITIONS:
                results[condition].append(run(condition, train, dev, args, seed, Path(tmp)))
                r = results[condition][-1]
                print(
                    f"seed {seed} {condition:14s} {r['train_docs']:4.0f} docs  NER {r['ner']:.3f}  "
                    f"RE {r['re']:.3f}  spans {r['spans']:.3f}  score {r['score']:.3f}",
                    flush=True,
                )
    mean = {
        c: {k: statistics.mean(r[k] for r in rs) for k in ("ner", "re", "spans", "score")}
        for c, rs in results.items()
    }
    cost = mean["clean"]["score"] - mean["all"]["score"]
    print(f"\n{args.extractor}, {len(train)} training notes, {len(dev)} dev notes, {args.seeds} seeds")
    print(f"{'condition':14s} {'NER':>6s} {'RE':>6s} {'spans':>6s} {'score':>6s} {'recovered':>10s}")
    summary = {}
    for c in CONDITIONS:
        m = mean[c]
        recovered = (
            (m["score"] - mean["all"]["score"]) / cost if cost > 0 and c not in ("clean", "all") else None
        )
        summary[c] = {**{k: round(v, 4) for k, v in m.items()}, "recovered": recovered}
        rec = f"{recovered:10.2f}" if recovered is not None else f"{'':10s}"
        print(f"{c:14s} {m['ner']:6.3f} {m['re']:6.3f} {m['spans']:6.3f} {m['score']:6.3f} {rec}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "mean": summary, "runs": results}, indent=1
        ),
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
