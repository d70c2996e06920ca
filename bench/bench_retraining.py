"""Time from a stored correction to a promoted model, through the real retraining loop.

Run: ``python bench/bench_retraining.py [--trainer kiwi.encoder.v1] [--epochs 3] [--corrections 10]
[--start-from DIR] [--trainer-config JSON] [--keep DIR]``.
Uses the shared MTSamples split when it sits beside the checkout (else the sample corpus): a first
model is trained on the seed notes and promoted (timed separately; ``--start-from`` promotes a trained
model folder instead, e.g. the full-data LLaMA, whose adapter the job then continues), then
``--corrections`` other notes are stored as corrections one by one, as Label Studio submits would
arrive, and the clock runs from the last one to the promotion (or rejection) of the candidate,
debounce included. Prints a table and writes JSON (``--out``, default
``bench/results/retraining_<trainer>.json``); ``--keep`` copies a promoted candidate out of the run's
temporary folder, to evaluate or serve it later.
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rich.console import Console
from rich.table import Table

from recommender.corpora import SAMPLE_DIR, SHARED_MTSAMPLES, split_documents
from recommender.extractors.llama.layout import SNAPSHOT_DIR
from recommender.formats import read_documents
from recommender.model_versions import ModelVersions
from recommender.retraining import Corpora, Retrainer, get_trainer
from recommender.settings import Settings
from recommender.store import CorrectionStore

TARGET_SECONDS = 600.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trainer", default="kiwi.encoder.v1")
    ap.add_argument(
        "--epochs",
        type=int,
        default=Settings().train_epochs,
        help="epochs of the bootstrap and of the retraining job (default: KIWI_TRAIN_EPOCHS's, %(default)s)",
    )
    ap.add_argument("--corrections", type=int, default=10, help="corrected notes sent (= retrain_every)")
    ap.add_argument("--debounce", type=float, default=30.0, help="retrain_debounce_seconds")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument(
        "--start-from", type=Path, default=None, help="promote this model folder, train no first one"
    )
    ap.add_argument(
        "--trainer-config",
        type=json.loads,
        default={},
        help="the job's training settings as JSON (KIWI_TRAINER_CONFIG), e.g. '{\"max_examples\": 1600}'",
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--keep", type=Path, default=None,
        help="copy the model the job promoted to this folder (the run's own folder is temporary)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.keep is not None and args.keep.exists():
        sys.stderr.write(f"--keep [{args.keep}] exists; name a new folder\n")
        return 2
    if args.trainer == "kiwi.encoder.v1":
        import torch

        torch.set_num_threads(args.threads)

    if SHARED_MTSAMPLES.is_dir():
        train, dev = split_documents(read_documents(SHARED_MTSAMPLES))
        corpus = "mtsamples"
    else:
        train, dev = read_documents(SAMPLE_DIR), []
        corpus = "sample"
    if len(train) <= args.corrections:
        sys.stderr.write(f"need more than {args.corrections} training notes, have {len(train)}\n")
        return 2
    seed, corrected = train[: -args.corrections], train[-args.corrections :]

    with tempfile.TemporaryDirectory() as work:
        settings = Settings(
            model_dir=Path(work) / "models",
            trainer=args.trainer,
            train_epochs=args.epochs,
            trainer_config=args.trainer_config,
            retrain_every=args.corrections,
            retrain_debounce_seconds=args.debounce,
        )
        model_versions = ModelVersions(settings.model_dir)
        store = CorrectionStore(f"sqlite:///{work}/corrections.sqlite3")

        t = time.perf_counter()
        with model_versions.staging() as tmp:
            if args.start_from is not None:
                out = Path(tmp) / "model"
                shutil.copytree(args.start_from, out, ignore=shutil.ignore_patterns(SNAPSHOT_DIR))
            else:
                out = get_trainer(args.trainer)(seed, dev, tmp, None, epochs=args.epochs)
            first = model_versions.add(out)
        model_versions.promote(first)
        bootstrap_s = time.perf_counter() - t

        promoted_at: list[float] = []
        rt = Retrainer(
            settings,
            store,
            model_versions,
            on_promote=lambda _: promoted_at.append(time.perf_counter()),
            corpora=Corpora(seed, dev),
        )
        job = None
        for d in corrected:
            if store.add("bench", d.id, "annotator", "labelstudio", d) is not None:
                job = rt.notify_new_corrections("bench") or job
            last_correction = time.perf_counter()
        if job is None:
            sys.stderr.write("no job was triggered\n")
            return 1
        stages: dict[str, float] = {}
        while not job.done.is_set():
            stages.setdefault(job.stage.split(":")[0], time.perf_counter() - last_correction)
            time.sleep(0.2)
        end = promoted_at[0] if promoted_at else time.perf_counter()
        total = end - last_correction
        rt.shutdown()
        store.close()
        promoted = model_versions.current_version()
        kept = None
        if args.keep is not None and job.outcome == "promoted":
            kept = shutil.copytree(model_versions.path(promoted or ""), args.keep)

    result = {
        "trainer": args.trainer,
        "corpus": corpus,
        "seed_notes": len(seed),
        "corrected_notes": len(corrected),
        "dev_notes": len(dev),
        "epochs": args.epochs,
        "trainer_config": args.trainer_config,
        "debounce_seconds": args.debounce,
        "torch_threads": args.threads if args.trainer == "kiwi.encoder.v1" else None,
        "cpus": os.cpu_count(),
        "started_from": str(args.start_from) if args.start_from else None,
        "bootstrap_seconds": round(bootstrap_s, 1),
        "correction_to_model_seconds": round(total, 1),
        "stage_started_after_seconds": {k: round(v, 1) for k, v in stages.items()},
        "job_state": job.state,
        "outcome": job.outcome,
        "message": job.message,
        "gate": {k: job.metrics.get(k) for k in ("candidate", "current", "reason")},
        "target_seconds": TARGET_SECONDS,
        "within_target": job.outcome == "promoted" and total <= TARGET_SECONDS,
        "first_version": first,
        "promoted_version": promoted,
        "kept": str(kept) if kept else None,
    }
    table = Table(title=f"correction -> promoted model ({args.trainer}, {corpus})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    first_model = (
        f"copied from {args.start_from}" if args.start_from else f"trained on {len(seed)} seed notes"
    )
    table.add_row(f"first model ({first_model})", f"{bootstrap_s:.1f} s")
    for stage, at in stages.items():
        table.add_row(f"  '{stage}' began after", f"{at:.1f} s")
    table.add_row("last correction -> " + (job.outcome or job.state), f"{total:.1f} s")
    table.add_row("target", f"<= {TARGET_SECONDS:.0f} s: {'met' if result['within_target'] else 'NOT met'}")
    if kept:
        table.add_row("promoted model kept in", str(kept))
    Console().print(table)
    out = args.out or Path(__file__).parent / "results" / f"retraining_{args.trainer.split('.')[1]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    Console().print(f"wrote {out}", markup=False)
    return 0 if job.state == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
