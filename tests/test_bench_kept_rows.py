"""bench/kept_rows.py: a benchmark cut short is taken up again by the same run, never by another."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from kept_rows import KeptRows


def test_rows_are_kept_as_measured_and_read_back_only_by_the_same_run(tmp_path: Path) -> None:
    out = tmp_path / "results" / "bench.json"
    identity = {"version": "llama-1", "notes": ("a", "b")}
    first = KeptRows(out, identity)
    assert first.resumed == 0 and first.find(concurrency=1) is None
    first.add({"engine": "x", "concurrency": 1, "f1": 0.5}, {"engine": "y", "concurrency": 1, "f1": 0.4})
    assert json.loads(out.read_text())["rows"][1]["f1"] == 0.4  # on disk at once

    again = KeptRows(out, identity)  # the same command after an interruption
    assert again.resumed == 2
    assert again.find(engine="y", concurrency=1) == {"engine": "y", "concurrency": 1, "f1": 0.4}
    assert again.find(engine="y", concurrency=4) is None
    again.add({"engine": "x", "concurrency": 1, "f1": 0.6}, replacing={"engine": "x", "concurrency": 1})
    assert [r["f1"] for r in KeptRows(out, identity).rows] == [0.4, 0.6]

    other = KeptRows(out, {**identity, "version": "llama-2"})  # another model: nothing is reused
    assert other.resumed == 0 and other.rows == []
