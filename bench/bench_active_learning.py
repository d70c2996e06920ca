"""Does active learning save annotation here? Every strategy against random on the fixed MTSamples split.

Run: ``python bench/bench_active_learning.py [--learner encoder|lexicon] [--strategies random mnlp ...]
[--seeds 3] [--seed-notes 4] [--batch-notes 8] [--budget-notes 80] [--set encoder_layers=2 ...]
[--warm-epochs 1] [--threads 2] [--default-settings --reference-model DIR] [--calibration MODEL_DIR]``.

Pool: the 80 training notes; evaluation: the 16 development notes (``corpora.split_documents``). From
4 seed notes (the same per seed for every strategy), each round the strategy picks ``batch_notes``,
their gold is revealed, the learner retrains and is scored (mean of exact NER and RE F1), until the
budget. Reported per strategy over the seeds: annotated tokens, notes and edits (spans and relations
added, deleted, relabelled or re-bounded to correct the model's pre-annotation of each picked note) to
reach 95% of the score of the learner trained on all 80 notes, the saving against random, and the area
under the curve. The learner: ``lexicon`` (trains in milliseconds: every strategy, all 80 notes), or
``encoder`` with the fast settings below (warm-started each round from the last model). Written to
``bench/results/active_learning_<learner>/`` (results.json, report.html, resumable state per run).

``--default-settings`` uses the encoder's own training defaults instead of the fast ones (the check of
the winner against random); ``--reference-model DIR`` takes the reference from a model already trained
on the 80 pool notes with those settings (``bench_models.py``), checked by its data
fingerprint, instead of training one.

``--calibration MODEL_DIR`` instead reports the expected calibration error of an encoder model's span and
relation scores on the 16 development notes, with its saved temperatures and without them.
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
FAMILIES = {"encoder": "kiwi.encoder.v1", "lexicon": "kiwi.lexicon.v1"}
# A lexicon committee beside a lexicon learner must differ from it: this one also predicts the sequences
# annotated only now and then (the learner needs a label share of 0.3).
LEXICON_COMMITTEE = ["min_score=0.1"]
# The encoder's fast settings (--set replaces them): 2 of MiniLM's 6 layers, small batches so a few
# notes still give enough optimizer steps, 3 epochs for the seed round and the reference, then
# WARM_EPOCHS per round from the previous round's weights (which have seen the earlier notes).
FAST_ENCODER = {"encoder_layers": 2, "batch_size": 2, "epochs": 3, "patience": 3}
WARM_EPOCHS = 1


def _split() -> tuple[list[Any], list[Any]]:
    from recommender.corpora import SHARED_MTSAMPLES, split_documents
    from recommender.formats import brat

    if not SHARED_MTSAMPLES.is_dir():
        raise SystemExit(
            f"error: {SHARED_MTSAMPLES} is absent: the benchmark needs the shared MTSamples notes"
        )
    return split_documents(brat.read(SHARED_MTSAMPLES))


def _fmt(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return f"not reached ({stat['reached']}/{len(stat['per_seed'])})"
    return f"{stat['mean']:.0f} ± {stat['sd']:.0f}"


def _saving(stat: dict[str, Any], base: dict[str, Any]) -> str:
    if stat["mean"] is None or base["mean"] is None:
        return "-"
    return f"{100 * (1 - stat['mean'] / base['mean']):.0f}%"  # positive: fewer than random needed


def table(results: dict[str, Any]) -> str:
    summary = results["summary"]
    base = summary.get("random")
    head = (
        "| strategy | tokens to target | saving vs random | notes | edits to target | saving vs random "
        "| AUC (tokens) | AUC (notes) |\n|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for name, s in summary.items():
        tok, edits = s["tokens_to_target"], s["edits_to_target"]
        rows.append(
            f"| {name} | {_fmt(tok)} | {_saving(tok, base['tokens_to_target']) if base else '-'} "
            f"| {_fmt(s['notes_to_target'])} | {_fmt(edits)} "
            f"| {_saving(edits, base['edits_to_target']) if base else '-'} "
            f"| {s['auc_tokens']['mean']:.3f} ± {s['auc_tokens']['sd']:.3f} "
            f"| {s['auc_notes']['mean']:.3f} ± {s['auc_notes']['sd']:.3f} |"
        )
    return head + "\n" + "\n".join(rows)


def calibration(folder: Path) -> dict[str, Any]:
    """ECE of the model's scores on dev with its temperatures and with all temperatures 1."""
    import torch

    from recommender.evaluation import entities_only
    from recommender.evaluation.calibration import calibration as ece_of
    from recommender.extractors import load_extractor

    torch.set_num_threads(2)
    _, dev = _split()
    model = load_extractor(folder)
    fitted = dict(model.labels.temperatures)  # type: ignore[attr-defined]
    out: dict[str, Any] = {"model": model.version, "temperatures": fitted}
    for name, temps in (("uncalibrated", {}), ("temperature_scaled", fitted)):
        model.labels.temperatures = temps  # type: ignore[attr-defined]
        pred = model.predict([d.without_annotations() for d in dev])
        re_pred = model.predict([entities_only(d) for d in dev], entities_given=True)
        spans = ece_of(dev, pred)["spans"]
        out[name] = {"spans": spans, "relations_entities_given": ece_of(dev, re_pred)["relations"]}
        print(
            f"{name:20} span ECE {spans['ece']:.3f} ({spans['decisions']} spans), relation ECE "
            f"{out[name]['relations_entities_given']['ece']:.3f}",
            flush=True,
        )
    return out


def _score_reference(folder: Path, pool: list[Any], dev: list[Any], out: Path) -> None:
    """The reference of a model trained elsewhere, if it was trained on exactly the pool notes."""
    from recommender.active.simulate import score
    from recommender.extractors import load_extractor
    from recommender.extractors.base import fingerprint

    model = load_extractor(folder)
    if model.info.data_fingerprint != fingerprint(pool):
        raise SystemExit(f"error: {folder} was not trained on the {len(pool)} pool notes (data fingerprint)")
    out.mkdir(parents=True, exist_ok=True)
    reference = score(model, dev)
    (out / "reference.json").write_text(json.dumps(reference) + "\n", encoding="utf-8")
    print(f"reference: {model.version} from {folder}, score {reference['score']:.3f}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--learner", choices=sorted(FAMILIES), default="encoder")
    ap.add_argument("--strategies", nargs="+", default=None, help="default: all")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-notes", type=int, default=4)
    ap.add_argument("--batch-notes", type=int, default=8)
    ap.add_argument("--budget-notes", type=int, default=None, help="default: the whole pool")
    ap.add_argument("--set", action="append", default=[], help="learner setting KEY=VALUE")
    ap.add_argument("--no-warm-start", action="store_true", help="encoder: retrain from scratch each round")
    ap.add_argument(
        "--warm-epochs", type=int, default=WARM_EPOCHS, help="encoder: epochs of a warm-started round"
    )
    ap.add_argument(
        "--threads", type=int, default=2, help="torch threads (two 1-thread runs use 2 cores better)"
    )
    ap.add_argument("--committee", default="kiwi.lexicon.v1", help="second family of qbc")
    ap.add_argument(
        "--committee-set",
        action="append",
        default=None,
        help=f"committee setting KEY=VALUE; default for a lexicon committee: {LEXICON_COMMITTEE}",
    )
    ap.add_argument(
        "--no-reference", action="store_true", help="skip training on the whole pool (no target: curves only)"
    )
    ap.add_argument("--default-settings", action="store_true", help="encoder: its own defaults")
    ap.add_argument(
        "--reference-model", type=Path, default=None, help="a model trained on the whole pool: the reference"
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--calibration", type=Path, default=None, help="encoder model folder: ECE on dev")
    args = ap.parse_args()

    if args.calibration is not None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = calibration(args.calibration)
        (RESULTS / "calibration.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {RESULTS / 'calibration.json'}")
        return

    import torch

    from recommender.active.simulate import Learner, Plan, simulate
    from recommender.active.simulation_report import write
    from recommender.active.strategies import STRATEGIES
    from recommender.cli.simulate import parse_settings

    torch.set_num_threads(args.threads)
    family = FAMILIES[args.learner]
    fast = args.learner == "encoder" and not args.default_settings
    sets = [f"{k}={v}" for k, v in FAST_ENCODER.items()] if fast else []
    config = parse_settings(family, sets + args.set)
    warm = args.learner == "encoder" and not args.no_warm_start
    learner = Learner(family, config, warm_start=warm, warm_epochs=args.warm_epochs if warm else None)
    committee_sets = args.committee_set
    if committee_sets is None:
        committee_sets = LEXICON_COMMITTEE if args.committee == "kiwi.lexicon.v1" else []
    pool, dev = _split()
    out = args.out or RESULTS / f"active_learning_{args.learner}{'' if fast else '_default'}"
    if args.reference_model is not None and not (out / "reference.json").is_file():
        _score_reference(args.reference_model, pool, dev, out)
    names = args.strategies or list(STRATEGIES)
    started = time.perf_counter()
    results, runs = simulate(
        pool,
        dev,
        learner,
        names,
        list(range(args.seeds)),
        Plan(args.seed_notes, args.batch_notes, args.budget_notes),
        out,
        committee=[Learner(args.committee, parse_settings(args.committee, committee_sets))],
        target_fraction=None if args.no_reference else 0.95,
        say=lambda line: print(line, file=sys.stderr, flush=True),
    )
    results["seconds"] = round(time.perf_counter() - started, 1)
    page = write(results, runs, out)
    ref = results["reference"]
    warm_note = f"warm start, {learner.warm_epochs} epoch(s) a round, " if learner.warm_start else ""
    print(f"\nlearner {family} ({warm_note}{json.dumps(learner.describe()['config'])})")
    reference = (
        f"reference (all {len(pool)} notes): score {ref['score']:.3f} (NER {ref['ner']:.3f}, "
        f"RE {ref['re']:.3f}); target {results['target']:.3f}"
        if ref
        else "no reference (--no-reference): no target"
    )
    print(f"{reference}; {results['pool_tokens']} tokens in the pool; {results['seconds']:.0f} s\n")
    print(table(results))
    print(f"\nwrote {out / 'results.json'} and {page}")


if __name__ == "__main__":
    main()
