"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import httpx
import pytest

from recommender.document import Document, Span

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_script(name: str) -> ModuleType:
    """``bench/NAME.py`` loaded as a module (bench/ is a folder of scripts, not a package); its
    neighbours (``kept_rows``, ``bench_models``) import as they do when it runs."""
    import importlib.util

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def in_ci() -> bool:
    """CI=true (as GitHub Actions, GitLab CI and `.ci/run` set it): the run must have every component."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_or_skip(name: str, reason: str) -> NoReturn:
    """A real component the test needs (``name``: Label Studio, Chromium, PostgreSQL, podman, ...) is
    missing or did not start; ``reason`` says why and how to get it. On a laptop the test skips with
    the reason; in CI it fails with one line naming the component, so a broken install step cannot
    pass as a green run of skips."""
    if in_ci():
        pytest.fail(f"CI needs {name}: {reason}", pytrace=False)
    pytest.skip(f"{name}: {reason}")


def require_module(module: str, name: str, how: str) -> ModuleType:
    """``module`` imported, or require_or_skip naming the component ``name`` and ``how`` to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        require_or_skip(name, f"cannot import {module} ({e}); {how}")


def run_kiwi(
    *args: str, timeout: float = 180, columns: int | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The `kiwi` console script in a fresh process: exit codes and stderr as a user sees them
    (``columns``: the terminal width rich lays help tables out for; ``env``: variables to add)."""
    env = {**os.environ, **(env or {}), **({} if columns is None else {"COLUMNS": str(columns)})}
    return subprocess.run(
        [sys.executable, "-c", "from recommender.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def wait_healthy(
    url: str, proc: subprocess.Popen[Any], timeout: float, poll: float = 0.5, what: str = "kiwi serve"
) -> None:
    """Return once ``url``/health answers 200; RuntimeError naming the url when ``proc`` exits first
    (with the tail of its output where it was piped) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            out = proc.stdout or proc.stderr
            tail = out.read()[-3000:] if out is not None else ""
            tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
            raise RuntimeError(f"{what} at {url} exited with {proc.returncode}: {tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url}/health in {timeout:.0f} s")
        time.sleep(poll)


def chromium() -> str:
    """The headless browser's path (require_or_skip when there is none)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        require_or_skip("Chromium", "not installed (scripts/setup_external.sh installs it as root)")
    return found


def chromium_screenshot(
    browser: str, url: str, shot: Path, profile: Path, size: tuple[int, int] = (1280, 2000)
) -> subprocess.CompletedProcess[str]:
    """Render ``url`` in headless Chromium into the PNG ``shot``; stderr carries the page's console
    messages (``CONSOLE`` lines) for the caller to check."""
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            "--enable-logging=stderr",
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            f"--window-size={size[0]},{size[1]}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def phrase_spans(doc: Document) -> Callable[[str, str], Span]:
    """``span(label, phrase)`` adds a span over the first occurrence of ``phrase`` in ``doc``."""

    def span(label: str, phrase: str) -> Span:
        b = doc.text.index(phrase)
        return doc.add_span(label, b, b + len(phrase))

    return span


def emoji_note() -> Document:
    """A note with characters outside the BMP before, inside and after annotations."""
    text = "Pt 😀 denies chest pain 🩺. Took aspirin 81 mg daily 💊 for 𝔥eadache.\nBP 120/80."
    doc = Document(id="emoji_note", text=text)
    span = phrase_spans(doc)
    neg, pain, loc = span("negation", "denies"), span("problem", "chest pain"), span("bodyloc", "chest")
    drug, strength, freq = span("drug", "aspirin"), span("strength", "81 mg"), span("frequency", "daily")
    span("problem", "𝔥eadache")
    test, val = span("test", "BP"), span("labvalue", "120/80")
    for head, tail in ((pain, neg), (pain, loc), (drug, strength), (drug, freq), (test, val)):
        doc.add_relation(head, tail)
    return doc.validate()


def tiny_bert(folder: Path, layers: int = 1, dropout: float | None = None) -> Path:
    """A random BERT with the MiniLM vocabulary (offline), saved as a local Hugging Face folder;
    ``dropout`` replaces BERT's default where given."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from recommender.extractors.encoder import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("minilm"))
    names = ("hidden_dropout_prob", "attention_probs_dropout_prob")
    extra = {} if dropout is None else dict.fromkeys(names, dropout)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **extra,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def predict_labels(base: str) -> dict[str, Any]:
    """Label Studio /predict of a short note at ``base``; asserts it finds a problem and a drug and
    returns the prediction."""
    task = {"id": 1, "data": {"text": "He denies chest pain. Aspirin 81 mg daily."}}
    r = httpx.post(f"{base}/predict", json={"tasks": [task]}, timeout=30)
    assert r.status_code == 200
    (prediction,) = r.json()["results"]
    labels = {x["value"]["labels"][0] for x in prediction["result"] if x["type"] == "labels"}
    assert {"problem", "drug"} <= labels
    return dict(prediction)
