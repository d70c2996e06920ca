"""The prepared GPU check (bench/gpu_check.sh): its shell syntax, and its Python on the CPU at a tiny
shape, so the script a lent GPU machine runs is known to work before device time is spent on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "bench_gpu_engine.py"


def test_gpu_check_script_parses() -> None:
    run = subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, cwd=REPO
    )


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small byte-level tokenizer built here (the device run uses SmolLM2's, `--save-tokenizer`)."""
    pytest.importorskip("peft")
    from test_llama_training import build_tiny_base

    from recommender.corpora import load_sample

    return build_tiny_base(tmp_path_factory.mktemp("tok") / "base", load_sample())


def test_gpu_engine_bench_runs_at_a_tiny_shape_on_the_cpu(tokenizer_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    args = ["--device", "cpu", "--shape", "tiny", "--dtype", "fp32", "--tokenizer", str(tokenizer_dir)]
    limits = ["--limit", "2", "--plain", "1", "--repeats", "2", "--max-new-tokens", "24"]
    run = _bench(*args, *limits, "--out", str(out))
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["prompts"] == 2 and report["plain_equal_to_engine"] == "1/1"
    assert len(report["plain_runs_seconds"]) == len(report["engine_runs_seconds"]) == 2
    assert report["speedup_same_prompts"] > 0 and report["engine_seconds_per_prompt"] > 0


@pytest.mark.gpu
def test_gpu_engine_bench_on_cuda(tokenizer_dir: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here; bench/gpu_check.sh runs this where the device tool lends one")
    out = tmp_path / "gpu.json"
    run = _bench(
        "--shape", "llama3-8b", "--tokenizer", str(tokenizer_dir), "--limit", "32", "--out", str(out)
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text(encoding="utf-8"))["speedup_same_prompts"] > 1
