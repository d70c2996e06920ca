"""The LLaMA's learning curve: RE (and NER) F1 on the development notes against the examples seen.

Run: ``python bench/bench_learning_curve.py --model DIR [--notes 16] [--ner] [--out FILE.json]``.

A LLaMA training run keeps its adapter every ``SNAPSHOT_STEPS`` optimizer steps under
``DIR/snapshots/step-NNNNN/`` (a run still under way is read from its checkpoint). Each snapshot is
merged into the run's base as a model folder is served, predicts the first
``--notes`` development notes with their gold entities given (the paper's RE mode; with ``--ner`` also
from raw text) and is scored. The examples seen at a step come from the run's own order (its seed,
data and settings), so the curve counts what that run trained on. Each row is kept in the JSON as it
is scored, with its snapshot's checksum: the same command run again scores only the snapshots still
missing (or changed).
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from kept_rows import KeptRows  # bench/, the script's own folder

from recommender import corpora
from recommender.evaluation import evaluate
from recommender.evaluation.scorer import entities_only
from recommender.extractors.base import MODEL_INFO_FILE, BaseModelRef, ModelInfo, file_checksum
from recommender.extractors.checkpoint import CHECKPOINT_DIR, STATE_FILE
from recommender.extractors.llama.base_model import (
    base_cache,
    load_base_for,
    load_tokenizer,
    pretrained_path,
    resolve,
    resolve_dtype,
)
from recommender.extractors.llama.config import LlamaConfig
from recommender.extractors.llama.extractor import LlamaExtractor, trained_on
from recommender.extractors.llama.layout import NAME, SNAPSHOT_DIR
from recommender.extractors.llama.task import Templates
from recommender.extractors.llama.training import examples_seen, training_set
from recommender.formats import brat


def run_identity(model: Path) -> tuple[LlamaConfig, BaseModelRef, Templates, str]:
    """The run's config, base, prompts and the base weights it trains on (``quantization``): from the
    finished model folder, or from the checkpoint of a run still under way (its snapshots can be scored
    before it ends; its config's quantization is what it trains on where 4-bit loading works)."""
    if (model / MODEL_INFO_FILE).is_file():
        folder = LlamaExtractor.read_folder(model)
        if folder.base is None:
            raise SystemExit(f"error: [{model}] names no base model")
        return folder.config, folder.base, folder.templates, trained_on(folder.info)
    state = model / CHECKPOINT_DIR / STATE_FILE
    if not state.is_file():
        raise SystemExit(f"error: [{model}] holds neither {MODEL_INFO_FILE} nor {state.relative_to(model)}")
    run = torch.load(state, weights_only=False, map_location="cpu")["run"]
    config = LlamaConfig(**run["config"])
    return config, BaseModelRef.from_dict(run["base"]), Templates.packaged(), config.quantization


def snapshot_extractor(model: Path, snapshot: Path) -> LlamaExtractor:
    """The run's base with ``snapshot``'s adapter merged in, served as ``load`` serves a model (on the
    weights the adapter trained on)."""
    from peft import PeftModel

    config, base_ref, templates, weights = run_identity(model)
    cache_dir = base_cache(model, config.cache_dir)
    dtype = resolve_dtype(config.dtype)
    base, tokenizer = load_base_for(base_ref, cache_dir, dtype=dtype, trained_on=weights)
    merged = PeftModel.from_pretrained(base, str(snapshot)).merge_and_unload().eval()
    info = ModelInfo(extractor=NAME, version=snapshot.name)
    return LlamaExtractor(merged, tokenizer, config, templates, info, base_ref)


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
    config, base_ref, templates, weights = run_identity(args.model)
    cache_dir = base_cache(args.model, config.cache_dir)
    tokenizer = load_tokenizer(pretrained_path(resolve(base_ref.name), cache_dir))
    encoded, _ = training_set(fit, config, tokenizer, templates)

    identity = {"model": str(args.model), "dev_notes": [d.id for d in gold], "ner": args.ner}
    identity["served_on"] = weights  # rows scored on other base weights are not these
    kept = KeptRows(args.out, identity)
    print(f"{'step':>6}{'NER seen':>10}{'RE seen':>9}{'RE F1':>8}{'NER F1':>8}{'s/note':>8}")
    for snap in snapshots:
        step = int(snap.name.removeprefix("step-"))
        adapter = file_checksum([snap / "adapter_model.safetensors"])
        row = kept.find(step=step, adapter_sha256=adapter)  # scored by an earlier run of this command
        if row is None:
            row = score_snapshot(args.model, snap, gold, args.ner)
            seen = examples_seen(encoded, config, step)
            row = {
                "step": step,
                "adapter_sha256": adapter,
                "ner_seen": seen["ner"],
                "re_seen": seen["re"],
                **row,
            }
            kept.add(row, replacing={"step": step})  # a snapshot of another run at this step
        ner = f"{row['ner_exact_f1']:.3f}" if args.ner else "-"
        print(
            f"{step:>6}{row['ner_seen']:>10}{row['re_seen']:>9}{row['re_exact_f1']:>8.3f}{ner:>8}"
            f"{row['seconds_per_note']:>8.1f}"
        )
    print(f"wrote {args.out}")
    return 0


def score_snapshot(model: Path, snap: Path, gold: list[Any], ner: bool) -> dict[str, Any]:
    """RE exact and relaxed F1 of one snapshot on ``gold`` with the main entities given (and NER from
    text with ``ner``), and its seconds per note."""
    extractor = snapshot_extractor(model, snap)
    started = time.perf_counter()
    re_pred = extractor.predict([entities_only(d) for d in gold], entities_given=True)
    pred = extractor.predict([d.without_annotations() for d in gold]) if ner else re_pred
    seconds = (time.perf_counter() - started) / len(gold)
    scores = evaluate(gold, pred, re_pred=re_pred).to_dict()
    return {
        "re_exact_f1": scores["re"]["exact"]["f1"],
        "re_relaxed_f1": scores["re"]["relaxed"]["f1"],
        "ner_exact_f1": scores["ner"]["exact"]["f1"] if ner else None,
        "seconds_per_note": round(seconds, 2),
    }


if __name__ == "__main__":
    raise SystemExit(main())
