"""Predict latency of the running service for a ~650-token note, at 1, 4 and 16 concurrent clients.

Run: ``python bench/bench_service.py [--model DIR] [--requests 96] [--out bench/results/service.json]``.
Starts ``kiwi serve`` in its own process on a free loopback port, then for each
client count sends a fixed number of requests per protocol (Label Studio ``/predict`` with one task;
INCEpTION ``/inception/entities/predict`` with the note as CAS XMI, and ``/inception/relations/predict``
with the note's gold spans in the CAS, as once an annotator has accepted them) from that many threads, each
with its own keep-alive connection. Reports p50/p95 latency and throughput in notes per second.
Without ``--model`` it serves a lexicon model trained on the sample corpus (the encoder is the
production model: pass its folder). Target: p95 <= 0.5 s at 4 clients.
"""

from __future__ import annotations

from recommender.cores import apply_process_policy

apply_process_policy()  # before torch is imported: OpenMP reads its environment once

import argparse
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from recommender.corpora import SAMPLE_DIR, SHARED_MTSAMPLES
from recommender.document import Document
from recommender.extractors.lexicon import LexiconExtractor
from recommender.formats import brat
from recommender.formats.xmi import (
    DEFAULT_LAYERS,
    PREDICTED,
    document_to_cas,
    load_typesystem_xml,
    project_typesystem,
)
from recommender.text import tokenize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import wait_healthy

TARGET_TOKENS = 650


def bench_note() -> Document:
    """Whole notes from the shared corpus (else the sample) joined until about 650 tokens, with their
    gold spans (what an annotator has accepted when the relation recommender runs), no relations."""
    folder = SHARED_MTSAMPLES if SHARED_MTSAMPLES.is_dir() else SAMPLE_DIR
    parts: list[Document] = []
    for doc in sorted(brat.read(folder), key=lambda d: d.id):
        parts.append(doc)
        text = "\n\n".join(d.text for d in parts)
        if len(tokenize(text, 0, len(text))) >= TARGET_TOKENS:
            break
    words = tokenize(text, 0, len(text))
    cut = words[min(TARGET_TOKENS, len(words)) - 1].end
    note = Document("bench_note", text[:cut])
    offset = 0
    for doc in parts:
        for span in doc.spans:
            if offset + span.end <= cut:
                note.add_span(span.label, offset + span.begin, offset + span.end)
        offset += len(doc.text) + 2
    return note


# INCEpTION sends the whole project type system (all DKPro and INCEpTION types, ~60 kB) with every
# request; the shared fixture has one. Without it, a small hand-made one.
INCEPTION_REQUEST = SHARED_MTSAMPLES.parents[2] / "fixtures/inception/synthetic/predict_span_request.json"


def inception_body(doc: Document, layer: str = DEFAULT_LAYERS.span_type) -> dict[str, Any]:
    if INCEPTION_REQUEST.is_file():
        ts = load_typesystem_xml(json.loads(INCEPTION_REQUEST.read_text(encoding="utf-8"))["typeSystem"])
    else:
        ts = project_typesystem()
        for name in (DEFAULT_LAYERS.span_type, DEFAULT_LAYERS.relation_type):
            ts.create_feature(ts.get_type(name), PREDICTED, "uima.cas.Boolean")
            ts.create_feature(ts.get_type(name), "label_score", "uima.cas.Double")
            ts.create_feature(ts.get_type(name), "label_score_explanation", "uima.cas.String")
    return {
        "typeSystem": ts.to_xml(),
        "document": {"xmi": document_to_cas(doc, ts).to_xmi(), "documentId": 1, "userId": "bench"},
        "metadata": {"layer": layer, "feature": "label", "projectId": 1, "anchoringMode": "tokens"},
    }


@contextmanager
def serve_process(model: Path, model_dir: Path) -> Iterator[str]:
    """``kiwi serve --model MODEL`` on a free loopback port, retraining off; yields its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-c", "from recommender.cli import main; main()", "serve", "--model", str(model)]
    cmd += ["--model-dir", str(model_dir), "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(cmd, env=os.environ | {"KIWI_RETRAIN": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server, 120)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def run(url: str, path: str, body: dict[str, Any], clients: int, total: int) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = max(1, total // clients)

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            for _ in range(per_client):
                t = time.perf_counter()
                r = c.post(path, json=body)
                elapsed = time.perf_counter() - t
                r.raise_for_status()
                with lock:
                    latencies.append(elapsed)

    wall = concurrently(worker, clients)
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "p50_s": round(statistics.median(latencies), 4),
        "p95_s": round(p95(latencies), 4),
        "notes_per_s": round(len(latencies) / wall, 2),
    }


def concurrently(worker: Callable[[], None], clients: int) -> float:
    """Run ``worker`` in ``clients`` threads at once; the wall-clock seconds until all are done."""
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def p95(ordered: list[float]) -> float:
    """The 95th percentile of sorted latencies (nearest rank)."""
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model folder to serve (default: a lexicon model)")
    ap.add_argument("--requests", type=int, default=96, help="requests per protocol and client count")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--out", type=Path, default=Path("bench/results/service.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    note = bench_note()
    n_tokens = len(tokenize(note.text, 0, len(note.text)))
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = Path(tmp) / "lexicon"
            LexiconExtractor.train(brat.read(SAMPLE_DIR)).save(model)
        bodies = {
            "labelstudio /predict": ("/predict", {"tasks": [{"id": 1, "data": {"text": note.text}}]}),
            "inception entities": ("/inception/entities/predict", inception_body(note.without_annotations())),
            "inception relations": (
                "/inception/relations/predict",
                inception_body(note, DEFAULT_LAYERS.relation_type),
            ),
        }
        rows = []
        # The server runs in its own process, as `kiwi serve` does: client threads here must not
        # share its interpreter (and GIL).
        with serve_process(model, Path(tmp) / "models") as url:
            version = httpx.get(f"{url}/models", timeout=10).json()["serving"]
            for name, (path, body) in bodies.items():
                run(url, path, body, 1, 3)  # warm-up
                for clients in args.clients:
                    rows.append({"protocol": name} | run(url, path, body, clients, args.requests))

    print(f"model {version}, note of {n_tokens} tokens ({len(note.text)} characters)")
    print(f"{'protocol':<22}{'clients':>8}{'requests':>9}{'p50 s':>9}{'p95 s':>9}{'notes/s':>9}")
    for r in rows:
        print(
            f"{r['protocol']:<22}{r['clients']:>8}{r['requests']:>9}{r['p50_s']:>9.3f}"
            f"{r['p95_s']:>9.3f}{r['notes_per_s']:>9.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"model": version, "note_tokens": n_tokens, "note_chars": len(note.text), "results": rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
