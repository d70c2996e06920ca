"""`kiwi serve` as `make serve` runs it (and the Docker image): bootstrap a model, then serve it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from support import predict_labels, run_kiwi, wait_healthy

from recommender.corpora import SAMPLE_DIR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_without_a_model_says_what_to_do(tmp_path: Path) -> None:
    run = run_kiwi("serve", "--model-dir", str(tmp_path / "models"), "--port", str(free_port()))
    assert run.returncode == 2
    assert "--bootstrap" in run.stderr and "Traceback" not in run.stderr


def test_bootstrap_trains_promotes_and_serves_real_predictions(tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {
        "KIWI_TRAINER": "kiwi.lexicon.v1",  # the encoder path is covered by its own tests
        "KIWI_SEED_CORPUS": str(SAMPLE_DIR),
        "KIWI_RETRAIN": "false",
    }
    cmd = [sys.executable, "-c", "from recommender.cli import main; main()", "serve", "--bootstrap"]
    cmd += ["--model-dir", str(tmp_path / "models"), "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, server, 120)
        prediction = predict_labels(base)
        versions = httpx.get(f"{base}/models", timeout=5).json()
        assert versions["current"] == prediction["model_version"]
        page = httpx.get(f"{base}/", timeout=5)
        assert page.status_code == 200 and prediction["model_version"] in page.text
    finally:
        server.terminate()
        server.wait(timeout=30)
    said = " ".join((server.stdout.read() if server.stdout else "").split())
    # every step said in words; 4 notes are too few to measure anything on, and it says so
    assert "Training kiwi.lexicon.v1 on 4 notes of KIWI_SEED_CORPUS" in said, said
    assert "too few for a development split" in said and "not measured" in said
    assert "as the baseline" in said and f"Serving on http://127.0.0.1:{port}/" in said
