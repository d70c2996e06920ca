"""What limits the LLaMA's relations: its training examples, its tokenizer's tags, its RE outputs.

Run: ``python bench/bench_re_analysis.py [--model DIR] [--max-length 1000] [--out FILE.json]``.

Without ``--model``: the Kiwi instruction examples of the 68 notes a model fits (the 80 training notes
less the 12 validation notes), per kind: how many, how many exceed ``--max-length`` tokens (left out of
training), how many RE targets tag no modifier; and the tokens each tag takes in the SmolLM2
tokenizer (``--base``). With ``--model``: the model predicts the 16 development notes with their gold
entities given (RE), keeping its prompts and outputs, and the report counts over-copied outputs (gold
has modifiers, the output none), tags over the main entity itself, and per modifier type the gold,
predicted and matched tags.
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from recommender import corpora
from recommender.evaluation.scorer import entities_only
from recommender.extractors.llama.analysis import (
    example_report,
    outputs_with_gold,
    re_output_report,
    tag_tokens,
)
from recommender.extractors.llama.base_model import load_tokenizer, pretrained_path, resolve
from recommender.extractors.llama.extractor import AUDIT_KEY
from recommender.extractors.llama.task import Templates, training_examples
from recommender.formats import brat
from recommender.schema import load_schema


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a kiwi.llama.v1 model folder to analyse the outputs of")
    ap.add_argument("--base", default="smollm2", help="base whose tokenizer counts tokens (no --model)")
    ap.add_argument("--max-length", type=int, default=1000, help="training max_length in tokens")
    ap.add_argument("--out", type=Path, default=Path("bench/results/re_analysis.json"))
    args = ap.parse_args()
    if not corpora.SHARED_MTSAMPLES.is_dir():
        raise SystemExit(f"error: {corpora.SHARED_MTSAMPLES} is absent: the analysis reads the shared notes")
    train, dev = corpora.split_documents(brat.read(corpora.SHARED_MTSAMPLES))
    fit, _ = corpora.validation_split(train)
    templates = Templates.packaged()
    report: dict[str, object] = {}

    if args.model is None:
        cache = Path(tempfile.gettempdir()) / "kiwi-bench-base"
        tokenizer = load_tokenizer(pretrained_path(resolve(args.base), cache))
        examples = report["examples"] = example_report(
            training_examples(fit, templates), tokenizer, args.max_length
        )
        tags = report["tag_tokens"] = tag_tokens(tokenizer, load_schema().label_names)
        print(f"{'kind':<6}{'examples':>10}{'too long':>10}{'copy only':>11}{'median tok':>12}{'max tok':>9}")
        for kind, r in examples.items():
            print(
                f"{kind:<6}{r['examples']:>10}{r['too_long']:>10}{r['copy_only']:>11}"
                f"{r['median_tokens']:>12.0f}{r['max_tokens']:>9}"
            )
        print("tokens per tag:", ", ".join(f"{k} {v}" for k, v in tags.items()))
    else:
        from recommender.extractors import load_extractor

        extractor = load_extractor(args.model)
        extractor.config = replace(extractor.config, keep_prompts=True)  # type: ignore[attr-defined]
        gold = sorted(dev, key=lambda d: d.id)
        schema = load_schema()
        predicted = extractor.predict([entities_only(d, schema) for d in gold], entities_given=True)
        outputs = outputs_with_gold(gold, predicted, AUDIT_KEY, templates)
        result = report["outputs"] = re_output_report(outputs)
        print(
            f"{result['outputs']} RE outputs; gold tags modifiers in {result['gold_with_modifiers']}, "
            f"of which {result['over_copied']} outputs tag none (over-copied); "
            f"{result['main_entity_tagged']} tags over the main entity itself"
        )
        print(f"{'modifier':<14}{'gold':>6}{'pred':>6}{'recall':>8}{'precision':>10}")
        for label, r in result["per_modifier"].items():
            rec = f"{r['recall']:.3f}" if r["recall"] is not None else "-"
            prec = f"{r['precision']:.3f}" if r["precision"] is not None else "-"
            print(f"{label:<14}{r['gold']:>6}{r['predicted']:>6}{rec:>8}{prec:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
