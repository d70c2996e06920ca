"""Corpus throughput: single-process ``kiwi predict`` against Ray Data (local with 1 and 2 encoder
actors, and a two-node cluster of separate processes on this machine), over the same corpus.

Run: ``python bench/bench_corpus.py [--model DIR] [--notes 2000] [--out bench/results/corpus.json]``.
The corpus is the 96 shared MTSamples notes repeated to ``--notes``; each copy gets a line "Copy K."
appended, so every note is a distinct text (a run predicts a repeated text once). Without ``--model``
an encoder is trained first (``kiwi train bert``, all-MiniLM-L6-v2, 4 epochs on 8 of the notes, 2 others
for development): the
figures are about throughput, not F1. Every run starts from an empty prediction cache (SQLite).

Rows: notes/s over the whole command (model load and Ray start-up included) and after the first
prediction; Ray's start-up (``ray.init``, then the actors loading the model until the first
prediction), the cluster's start (two ``ray start`` processes) and the peak memory of each actor.
The machine's load average is recorded before and after: on a shared machine the figures move.
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
EPOCHS = 4  # enough for the model to find spans, so relations are scored as in real use
SHARED = REPO.parent / "shared" / "corpora" / "mtsamples" / "train"


def build_corpus(out: Path, n: int) -> int:
    texts = sorted(SHARED.glob("*.txt"))
    if not texts:
        sys.exit(f"no notes in {SHARED}: the shared corpus sits beside the team's checkouts only")
    out.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        src = texts[k % len(texts)]
        text = src.read_text(encoding="utf-8") + f"\n\nCopy {k // len(texts)}."
        (out / f"{src.stem}__{k // len(texts)}.txt").write_text(text, encoding="utf-8")
    return n


def train_model(out: Path, work: Path) -> Path:
    notes = sorted(SHARED.glob("*.txt"))
    for folder, picked in (("train", notes[:8]), ("dev", notes[8:10])):
        (work / folder).mkdir()
        for src in picked:
            for suffix in (".txt", ".ann"):
                (work / folder / f"{src.stem}{suffix}").write_bytes(src.with_suffix(suffix).read_bytes())
    kiwi = [sys.executable, "-c", "from recommender.cli import main; main()", "train", "bert"]
    where = ["--corpus", str(work / "train"), "--dev", str(work / "dev"), "--out", str(out)]
    subprocess.run([*kiwi, *where, "--epochs", str(EPOCHS)], check=True)
    return out


def single_process(model: Path, corpus: Path, work: Path, threads: int) -> dict[str, Any]:
    kiwi = [sys.executable, "-c", "from recommender.cli import main; main()"]
    began = time.monotonic()
    run = subprocess.run(
        [
            *kiwi,
            "predict",
            "--model",
            str(model),
            str(corpus),
            str(work / "single"),
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - began
    if run.returncode:
        sys.exit(run.stderr[-3000:])
    return {"seconds": seconds}


def on_ray(
    model: Path, corpus: Path, work: Path, name: str, actors: int, actor_cpus: float, address: str | None
) -> dict[str, Any]:
    from recommender.batch.notes import read_corpus
    from recommender.batch.ray_runner import RayOptions, run_corpus
    from recommender.store import CorrectionStore
    from recommender.store.predictions import PredictionCache

    store = CorrectionStore(f"sqlite:///{work / name}.sqlite3")
    try:
        notes = read_corpus(corpus, None, 200_000)
        options = RayOptions(address=address, actors=actors, actor_cpus=actor_cpus)
        docs, summary = run_corpus(
            model, notes, PredictionCache(store.engine), "bench", options, interactive=False
        )
    finally:
        store.close()
    assert summary.computed == len(notes.notes) and not summary.failed, summary.lines()
    return {
        "docs": docs,
        "seconds": summary.seconds,
        "ray_init_seconds": summary.startup_seconds,
        "first_result_seconds": summary.first_result_seconds,
        "actors": summary.actors,
        "peak_rss_mb_per_actor": sorted(round(w.peak_rss_mb) for w in summary.workers.values()),
        "summary": summary.lines(),
    }


def on_cluster(*args: Any) -> dict[str, Any]:
    *run, env = args
    os.environ.update(env)
    got = on_ray(*run)
    got.pop("docs")
    return got


def cache_writes(docs: list[Any], work: Path, batch: int) -> float:
    """Notes per second the driver stores alone into SQLite, ``batch`` notes a transaction (a run's
    batch size; 1: a commit per note)."""
    from recommender.document import Document
    from recommender.store import CorrectionStore
    from recommender.store.predictions import PredictionCache

    store = CorrectionStore(f"sqlite:///{work / f'writes-{batch}'}.sqlite3")
    try:
        cache = PredictionCache(store.engine)
        pairs = [(Document(id=d.id, text=d.text), d) for d in docs]
        began = time.monotonic()
        for k in range(0, len(pairs), batch):
            cache.put_many("bench", "v", "text", pairs[k : k + batch])
        return len(docs) / (time.monotonic() - began)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="encoder folder (default: train one, see above)")
    parser.add_argument("--notes", type=int, default=2000, help="corpus size (the 96 notes repeated)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "corpus.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kiwi-bench-corpus-") as tmp:
        work = Path(tmp)
        model = args.model or train_model(work / "model", work)
        corpus = work / "corpus"
        n = build_corpus(corpus, args.notes)

        got = single_process(model, corpus, work, cores)
        rows.append({"run": f"single process, kiwi predict --threads {cores}", **got})
        print(f"single process: {got['seconds']:.1f} s", flush=True)
        for name, actors, cpus in (("local-1", 1, float(cores)), ("local-2", 2, float(cores) / 2)):
            got = on_ray(model, corpus, work, name, actors, cpus, None)
            docs = got.pop("docs")
            rows.append({"run": f"Ray local, {actors} actor(s) x {cpus:g} CPU", **got})
            print(f"{name}: {got['seconds']:.1f} s", flush=True)

        from raycluster import LoopbackCluster

        cluster = LoopbackCluster(cpus=(1, 1), pythonpath=REPO)
        try:
            started = cluster.start()
            # a fresh driver process: Ray reads its token once per process (the local runs read none)
            env = {k: v for k, v in cluster.env.items() if k.startswith("RAY_")}
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                args_ = (model, corpus, work, "cluster", 2, 1.0, cluster.address, env)
                got = pool.submit(on_cluster, *args_).result()
        finally:
            cluster.stop()
        rows.append(
            {
                "run": "Ray two-node cluster (2 processes, 1 CPU each), 2 actors",
                "cluster_start_seconds": started,
                **got,
            }
        )
        print(f"cluster: {got['seconds']:.1f} s (+{started:.1f} s to start it)", flush=True)
        writes = {str(b): cache_writes(docs, work, b) for b in (1, 16)}

    for row in rows:
        row["notes_per_second"] = n / row["seconds"]
        after_first = row["seconds"] - row.get("ray_init_seconds", 0) - row.get("first_result_seconds", 0)
        row["notes_per_second_after_first"] = n / after_first if "first_result_seconds" in row else None
    result = {
        "notes": n,
        "model": str(args.model)
        if args.model
        else f"all-MiniLM-L6-v2 encoder, {EPOCHS} epochs on 8 MTSamples notes",
        "cores": cores,
        "machine": platform.platform(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "rows": rows,
        "cache_writes_per_second_sqlite": writes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    load_after = os.getloadavg()[0]
    print(f"\n{n} notes, {cores} cores, load average {load_before[0]:.1f} before, {load_after:.1f} after")
    print("| run | notes/s | after 1st | ray.init s | 1st result s | cluster start s | MB per actor |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        after = row["notes_per_second_after_first"]
        print(
            f"| {row['run']} | {row['notes_per_second']:.2f} | {'' if after is None else f'{after:.2f}'} | "
            f"{row.get('ray_init_seconds', 0):.1f} | {row.get('first_result_seconds', 0):.1f} | "
            f"{row.get('cluster_start_seconds', 0):.1f} | "
            f"{', '.join(str(m) for m in row.get('peak_rss_mb_per_actor', []))} |"
        )
    print(
        f"the driver's cache writes alone, SQLite: {writes['1']:.0f} notes/s a commit per note, "
        f"{writes['16']:.0f} notes/s 16 a commit (what a run does)"
    )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
