"""Predict latency with a LLaMA served beside the encoder: cache misses (the encoder answers as the
fallback while the LLaMA generates in the background) and cache hits, at 4 and 16 concurrent clients.

Run: ``python bench/bench_precompute.py --encoder DIR --llama DIR [--requests 64] [--clients 4 16]
[--out bench/results/precompute.json]``. Starts ``kiwi serve --model ENCODER --also llama=LLAMA`` in
its own process (a fresh SQLite database, retraining off). Rows:

* ``encoder``: the main model's INCEpTION entities predict (computed in the request), for reference;
* ``llama miss``: INCEpTION ``/inception/llama/entities/predict`` and Label Studio
  ``/labelstudio/llama/predict``, every request a note not seen before (the ~650-token note of
  ``bench_service.py`` with a numbered line appended), so each is answered by the encoder as the
  fallback and queued, while the server's background worker generates queued notes with the LLaMA;
* ``llama miss, imported``: Label Studio ``/labelstudio/llama/predict`` for notes not seen before
  that arrived first by a ``TASKS_CREATED`` webhook (a task import), whose fallback the worker computed
  ahead: still LLaMA misses, answered by the encoder's cached prediction;
* ``llama hit``: the same two with the note whose LLaMA prediction ``kiwi precompute`` put in the
  cache before the server started (skip with ``--no-hits``: it generates one note first).

Target (issue 13): the encoder-fallback p95 at 16 clients within 0.5 s. A miss whose fallback finds
no compute lane within ``--miss-budget`` seconds is refused with 503 (counted, not timed).
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from bench_service import bench_note, concurrently, inception_body, p95, wait_healthy

from recommender.document import Document
from recommender.text import tokenize

KIWI = [sys.executable, "-c", "from recommender.cli import main; main()"]


@contextmanager
def serve(encoder: Path, llama: Path, env: dict[str, str]) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [*KIWI, "serve", "--model", str(encoder), "--also", f"llama={llama}", "--port", str(port)]
    server = subprocess.Popen([*cmd, "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server, 300)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def run(url: str, path: str, bodies: list[dict[str, Any]], clients: int) -> tuple[dict[str, Any], set[str]]:
    """Send ``bodies`` from ``clients`` threads (keep-alive each); latency figures and the model
    versions / explanations that answered."""
    latencies: list[float] = []
    refused: list[float] = []
    answered: set[str] = set()
    lock = threading.Lock()
    queue = list(bodies)

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                t = time.perf_counter()
                r = c.post(path, json=body)
                elapsed = time.perf_counter() - t
                with lock:
                    if r.status_code == 503:  # no lane within the miss budget: the designed refusal
                        refused.append(elapsed)
                        continue
                    r.raise_for_status()
                    latencies.append(elapsed)
                    answered.update(who(r.json()))

    wall = concurrently(worker, clients)
    latencies.sort()
    if not latencies:
        latencies = [float("nan")]
    row = {
        "clients": clients,
        "requests": len(bodies),
        "refused_503": len(refused),
        "p50_s": round(statistics.median(latencies), 4),
        "p95_s": round(p95(latencies), 4),
        "max_s": round(latencies[-1], 4),
        "notes_per_s": round((len(bodies) - len(refused)) / wall, 2),
    }
    return row, answered


def who(answer: dict[str, Any]) -> set[str]:
    """Which model answered: Label Studio's model versions, INCEpTION's score explanations."""
    if "results" in answer:
        return {r["model_version"] for r in answer["results"]}
    xmi = answer["document"]
    marker = 'label_score_explanation="'
    out = set()
    start = xmi.find(marker)
    while start >= 0:
        end = xmi.index('"', start + len(marker))
        out.add(xmi[start + len(marker) : end])
        start = xmi.find(marker, end)
    return out


def fallback_done(url: str) -> int:
    """Predictions of the fallback (main) model the server's worker has cached."""
    queue = httpx.get(f"{url}/status", timeout=30).json()["precompute"]
    return int(queue.get("default", {}).get("done", 0))


def variant(note: Document, k: int) -> Document:
    """The note with a numbered line appended: another text, so another cache key."""
    return Document(f"{note.id}-{k}", f"{note.text}\n\nFollow-up visit {k}.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", type=Path, required=True, help="encoder model folder (the fallback)")
    ap.add_argument("--llama", type=Path, required=True, help="LLaMA model folder")
    ap.add_argument("--requests", type=int, default=64, help="requests per row")
    ap.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--miss-budget", type=float, default=2.0, help="KIWI_MISS_BUDGET_SECONDS of the server")
    ap.add_argument("--no-hits", action="store_true", help="skip the cache-hit rows (no generation first)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/precompute.json"))
    args = ap.parse_args()

    note = bench_note().without_annotations()
    n_tokens = len(tokenize(note.text, 0, len(note.text)))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = os.environ | {
            "KIWI_RETRAIN": "false",
            "KIWI_MODEL_DIR": str(Path(tmp) / "models"),
            "KIWI_DATABASE_URL": f"sqlite:///{tmp}/kiwi.sqlite3",
            "KIWI_MISS_BUDGET_SECONDS": str(args.miss_budget),
        }
        fill_s = None
        if not args.no_hits:
            notes = Path(tmp) / "notes"
            notes.mkdir()
            (notes / "bench_note.txt").write_text(note.text, encoding="utf-8")
            started = time.monotonic()
            cmd = [*KIWI, "precompute", "--model", str(args.llama), "--name", "llama", str(notes)]
            subprocess.run(cmd, env=env, check=True)
            fill_s = round(time.monotonic() - started, 1)
        with serve(args.encoder, args.llama, env) as url:
            versions = {
                n: m["version"] for n, m in httpx.get(f"{url}/status", timeout=30).json()["models"].items()
            }
            k = 0

            def misses(n: int) -> list[Document]:
                nonlocal k
                k += n
                return [variant(note, i) for i in range(k - n, k)]

            def ls(docs: list[Document]) -> list[dict[str, Any]]:
                return [{"tasks": [{"id": i, "data": {"text": d.text}}]} for i, d in enumerate(docs)]

            def inc(docs: list[Document]) -> list[dict[str, Any]]:
                return [inception_body(d) for d in docs]

            def imported(n: int) -> list[dict[str, Any]]:
                """Predict bodies of ``n`` new notes, imported first (their fallback computed ahead)."""
                docs = misses(n)
                tasks = [{"id": 100_000 + k + i, "data": {"text": d.text}} for i, d in enumerate(docs)]
                done = fallback_done(url)
                hook = {"action": "TASKS_CREATED", "project": {"id": 1}, "tasks": tasks}
                httpx.post(f"{url}/webhook", json=hook, timeout=60).raise_for_status()
                until = time.monotonic() + 600
                while fallback_done(url) < done + n:
                    if time.monotonic() > until:
                        raise SystemExit("error: the imported notes' fallback was not computed in 10 min")
                    time.sleep(0.5)
                return [{"tasks": [t]} for t in tasks]

            run(url, "/inception/entities/predict", inc([note] * 3), 1)  # warm-up
            for clients in args.clients:
                plan = [
                    (
                        "encoder",
                        "inception entities",
                        "/inception/entities/predict",
                        inc([note] * args.requests),
                    ),
                    (
                        "llama miss",
                        "inception entities",
                        "/inception/llama/entities/predict",
                        inc(misses(args.requests)),
                    ),
                    (
                        "llama miss",
                        "labelstudio /predict",
                        "/labelstudio/llama/predict",
                        ls(misses(args.requests)),
                    ),
                    (
                        "llama miss, imported",
                        "labelstudio /predict",
                        "/labelstudio/llama/predict",
                        imported(args.requests),
                    ),
                ]
                if not args.no_hits:
                    plan += [
                        (
                            "llama hit",
                            "inception entities",
                            "/inception/llama/entities/predict",
                            inc([note] * args.requests),
                        ),
                        (
                            "llama hit",
                            "labelstudio /predict",
                            "/labelstudio/llama/predict",
                            ls([note] * args.requests),
                        ),
                    ]
                for case, protocol, path, bodies in plan:
                    row, answered = run(url, path, bodies, clients)
                    rows.append({"case": case, "protocol": protocol, **row, "answered_by": sorted(answered)})
            queue = httpx.get(f"{url}/status", timeout=30).json()["precompute"]

    print(f"encoder {versions['default']}, llama {versions['llama']}; note of {n_tokens} tokens")
    if fill_s is not None:
        print(f"kiwi precompute of the hit note: {fill_s} s")
    head = (
        ("clients", 8),
        ("requests", 9),
        ("503", 5),
        ("p50 s", 8),
        ("p95 s", 8),
        ("max s", 8),
        ("notes/s", 9),
    )
    print(f"{'case':<22}{'protocol':<22}" + "".join(f"{name:>{width}}" for name, width in head))
    for r in rows:
        print(
            f"{r['case']:<22}{r['protocol']:<22}{r['clients']:>8}{r['requests']:>9}{r['refused_503']:>5}{r['p50_s']:>8.3f}"
            f"{r['p95_s']:>8.3f}{r['max_s']:>8.3f}{r['notes_per_s']:>9.1f}"
        )
    print(f"LLaMA queue at the end: {queue.get('llama')}")
    report = {
        "models": versions,
        "note_tokens": n_tokens,
        "precompute_fill_s": fill_s,
        "results": rows,
        "queue_at_end": queue,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
