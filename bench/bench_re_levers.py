"""Does an RE-weighted mix or a higher LoRA rank move the LLaMA's relations? Short runs side by side.

Run: ``python bench/bench_re_levers.py [--examples 2400] [--arm NAME:KEY=VALUE,...] [--out FILE.json]``.

Each arm is one QLoRA run of the LLaMA from the same base and seed over ``--examples`` training
examples (one epoch, the paper's schedule squeezed into it: warm-up then cosine decay), on the 80
training notes less their 12 validation notes. Arms differ only in their settings. Default arms:

- ``paper``: the examples as drawn (about 40% NER), rank 16 (the paper's);
- ``re_weighted``: the same number of examples, 20% of them NER (``ner_fraction=0.2``);
- ``rank_64``: as ``paper`` with LoRA rank 64 (alpha 256: the paper's alpha/rank ratio).

Scored on the validation notes (NER from text, RE with the gold entities given, exact F1), never on
the development notes: which lever the full run pulls is a choice, and choices are made where the
reported figures do not look. Each arm trains in its own process into ``bench/results/re_levers/NAME``
and resumes from its checkpoint there (a finished arm is read, not retrained). Prints a table and
writes JSON (``bench/results/re_levers.json``).
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_ARMS = (
    "paper:",
    "re_weighted:ner_fraction=0.2",
    "rank_64:lora_r=64,lora_alpha=256",
)


def parse_arm(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME:KEY=VALUE,...`` as (name, settings); an empty list keeps the defaults."""
    name, _, rest = spec.partition(":")
    if not name.isidentifier():
        raise SystemExit(f"error: arm [{spec}]: the name before ':' must be a word")
    sets: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"error: arm [{spec}]: [{item}] is not KEY=VALUE")
        sets[key.strip()] = value.strip()
    return name, sets


def arm_config(sets: dict[str, str], examples: int, base: dict[str, str] | None = None) -> Any:
    """The LLaMA config of an arm: one epoch over ``examples`` examples, then the arm's settings."""
    from bench_models import _config

    return _config("llama", {"epochs": "1", "max_examples": str(examples), **(base or {}), **sets})


def train_arm(train: Sequence[Any], config: Any, folder: Path) -> None:
    """Train (or resume) one arm; the trainer scores it on the validation notes at its last step."""
    from recommender.cli.common import progress
    from recommender.extractors import get_extractor_class

    get_extractor_class("llama").train(list(train), [], config, folder, progress=progress)


def arm_row(name: str, folder: Path, train: Sequence[Any]) -> dict[str, Any]:
    """What a finished arm learnt from what: its validation scores (the run's own last evaluation),
    the NER and RE examples it trained on, its hours."""
    from recommender.extractors.llama.base_model import load_tokenizer
    from recommender.extractors.llama.extractor import LlamaExtractor
    from recommender.extractors.llama.layout import TOKENIZER_DIR
    from recommender.extractors.llama.training import examples_seen, training_set
    from recommender.splits import validation_split

    saved = LlamaExtractor.read_folder(folder)
    info = saved.info
    last = [h for h in info.metrics["history"] if "validation_re" in h][-1]
    fit, _ = validation_split(list(train))
    encoded, _ = training_set(fit, saved.config, load_tokenizer(folder / TOKENIZER_DIR), saved.templates)
    seen = examples_seen(encoded, saved.config, info.metrics["steps"])
    return {
        "arm": name,
        "settings": {k: info.config[k] for k in ("lora_r", "lora_alpha", "max_examples", "ner_fraction")},
        "steps": info.metrics["steps"],
        "ner_examples": seen["ner"],
        "re_examples": seen["re"],
        "validation_ner": last["validation_ner"],
        "validation_re": last["validation_re"],
        "train_hours": round(info.metrics["train_seconds"] / 3600, 2),
        "peak_rss_mb": info.metrics["train_peak_rss_mb"],
    }


def print_table(rows: Sequence[dict[str, Any]], notes: int) -> None:
    print(f"\nvalidation notes: {notes}; exact F1 (NER from text, RE with gold entities)\n")
    print("| arm | rank | NER / RE examples | steps | NER F1 | RE F1 | hours | peak GB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arm']} | {r['settings']['lora_r']} | {r['ner_examples']} / {r['re_examples']} | "
            f"{r['steps']} | {r['validation_ner']:.3f} | {r['validation_re']:.3f} | {r['train_hours']} | "
            f"{r['peak_rss_mb'] / 1024:.1f} |"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=2400, help="training examples per arm (16 per step)")
    ap.add_argument("--arm", action="append", help="NAME:KEY=VALUE,... (repeat; default: the three above)")
    ap.add_argument("--folder", type=Path, default=RESULTS / "re_levers", help="one model folder per arm")
    ap.add_argument("--out", type=Path, default=RESULTS / "re_levers.json")
    ap.add_argument("--only", help=argparse.SUPPRESS)  # the child process: train this arm, then exit
    args = ap.parse_args()

    from recommender.corpora import SHARED_MTSAMPLES, split_documents
    from recommender.formats import brat
    from recommender.splits import validation_split

    if not SHARED_MTSAMPLES.is_dir():
        raise SystemExit(f"error: {SHARED_MTSAMPLES} is absent: the benchmark trains on the shared notes")
    train, _ = split_documents(brat.read(SHARED_MTSAMPLES))
    arms = dict(parse_arm(a) for a in (args.arm or DEFAULT_ARMS))
    if args.only:
        train_arm(train, arm_config(arms[args.only], args.examples), args.folder / args.only)
        return 0
    rows = []
    for name, sets in arms.items():
        folder = args.folder / name
        if not (folder / "kiwi_model.json").is_file():
            print(f"== {name}: training ({sets or 'defaults'})", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--only", name, "--examples", str(args.examples)]
            cmd += [f"--arm={a}" for a in (args.arm or DEFAULT_ARMS)] + ["--folder", str(args.folder)]
            subprocess.run(cmd, check=True)
        rows.append(arm_row(name, folder, train))
    _, validation = validation_split(train)
    print_table(rows, len(validation))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"examples_per_arm": args.examples, "validation_notes": len(validation), "arms": rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
