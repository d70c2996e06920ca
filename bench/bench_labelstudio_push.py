"""Label Studio as a corpus run's input and output: how fast one driver reads a project's tasks and
pushes predictions back (what ``kiwi predict --ray --label-studio`` does around the model calls).

Run: ``python bench/bench_labelstudio_push.py [--tasks 300] [--runs 1x1 4x1 1x100 2x100]
[--url URL --token TOKEN] [--out bench/results/labelstudio_push.json]``. A run ``WxC`` is W writers
(requests at once) of C predictions a request: 1 is as a request per task, 100 what the command sends.
Without ``--url`` a Label Studio is started from ``.cache/labelstudio-venv``
(``scripts/setup_external.sh``) on loopback and stopped at the end. Per run a fresh project gets
``--tasks`` tasks: the shared MTSamples notes repeated (generated notes where they are absent), their
gold spans and relations pushed as the predictions (a real prediction's size). Rows: tasks/s reading
the project with the prediction versions (``read_project``) and predictions/s pushed
(``push_predictions``). No model runs; the machine's load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
SHARED = REPO.parent / "shared" / "corpora" / "mtsamples" / "train"


def notes(n: int) -> tuple[list[Any], str]:
    from recommender.formats import brat
    from recommender.synthetic import generate

    docs = brat.read(SHARED) if SHARED.is_dir() else []
    source = "MTSamples (shared), repeated" if docs else "generated (synthetic)"
    docs = docs or generate(n, seed=1)
    return [docs[k % len(docs)] for k in range(n)], source


def one(ls: httpx.Client, token: str, docs: list[Any], writers: int, chunk: int) -> dict[str, Any]:
    from dataclasses import replace

    from recommender.batch.labelstudio_project import push_predictions, read_project
    from recommender.guidelines import labelstudio_config
    from recommender.service.labelstudio_client import LabelStudioClient

    r = ls.post(
        "/api/projects/", json={"title": f"push {writers}x{chunk}", "label_config": labelstudio_config()}
    )
    r.raise_for_status()
    pid = r.json()["id"]
    ls.post(f"/api/projects/{pid}/import", json=[{"text": d.text} for d in docs]).raise_for_status()
    client = LabelStudioClient(str(ls.base_url), token)
    try:
        start = time.monotonic()
        project = read_project(client, pid, "bench", 10**9)
        read = time.monotonic() - start
        by_text = {d.text: d for d in docs}
        predicted = [replace(by_text[n.text], id=n.id) for n in project.corpus.notes]
        pushed = push_predictions(client, project, predicted, writers, chunk)
    finally:
        client.close()
    assert len(pushed.shown) == len(docs) and not pushed.failed, pushed.failed
    return {
        "writers": writers,
        "chunk": chunk,
        "tasks": len(docs),
        "read_seconds": read,
        "read_tasks_per_second": len(docs) / read,
        "push_seconds": pushed.seconds,
        "pushes_per_second": len(docs) / pushed.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--runs", nargs="+", default=["1x1", "4x1", "1x100", "2x100"])
    parser.add_argument("--url", help="a running Label Studio (default: start one)")
    parser.add_argument("--token", help="its API token (legacy or personal access token)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "labelstudio_push.json")
    args = parser.parse_args()
    docs, source = notes(args.tasks)
    load_before = os.getloadavg()
    rows = []
    with ExitStack() as stack:
        if args.url:
            token = args.token or sys.exit("--url needs --token")
            ls = stack.enter_context(
                httpx.Client(base_url=args.url, headers={"Authorization": f"Token {token}"}, timeout=120)
            )
        else:
            from lsserver import LS_BIN, LS_TOKEN, running_label_studio

            if not LS_BIN.exists():
                sys.exit(f"no Label Studio at {LS_BIN}: run scripts/setup_external.sh, or give --url")
            data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kiwi-ls-bench-")))
            ls, token = stack.enter_context(running_label_studio(data)), LS_TOKEN
        version = ls.get("/api/version").json().get("release", "?")
        for run in args.runs:
            writers, chunk = (int(x) for x in run.split("x"))
            rows.append(one(ls, token, docs, writers, chunk))
            print(f"{run}: {rows[-1]['pushes_per_second']:.1f} pushes/s", flush=True)
    result = {
        "label_studio": version,
        "notes": source,
        "spans_per_note": sum(len(d.spans) for d in docs) / len(docs),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"\nLabel Studio {version}, {args.tasks} tasks ({source}, {result['spans_per_note']:.0f} spans "
        "each), "
        f"{os.cpu_count()} cores, load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print("| writers | predictions a request | read tasks/s | pushes/s |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['writers']} | {row['chunk']} | {row['read_tasks_per_second']:.0f} "
            f"| {row['pushes_per_second']:.1f} |"
        )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
