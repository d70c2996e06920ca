"""bench/bench_retraining.py run as a user runs it, on the lexicon (seconds): the job's promoted model
is kept where ``--keep`` says, and a folder that exists is refused, not overwritten."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from recommender.extractors import load_extractor

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_retraining.py"


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), "--trainer", "kiwi.lexicon.v1", "--corrections", "2",
               "--debounce", "0", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_the_promoted_model_is_kept_out_of_the_temporary_run(tmp_path: Path) -> None:
    keep, out = tmp_path / "kept", tmp_path / "result.json"
    run = bench("--keep", str(keep), "--out", str(out))
    result = json.loads(out.read_text())
    assert result["outcome"] == "promoted", run.stderr[-2000:]
    assert result["kept"] == str(keep)
    assert result["promoted_version"] != result["first_version"]
    assert load_extractor(keep).version == result["promoted_version"], "the job's candidate is kept"


def test_an_existing_keep_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "kept").mkdir()
    run = bench("--keep", str(tmp_path / "kept"), "--out", str(tmp_path / "result.json"))
    assert (
        run.returncode == 2
        and run.stderr.strip() == f"--keep [{tmp_path / 'kept'}] exists; name a new folder"
    )
    assert not (tmp_path / "result.json").exists()
