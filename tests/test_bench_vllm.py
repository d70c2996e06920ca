"""bench/bench_vllm.py's account of how the two engines' generations differ."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # the script imports kept_rows as its neighbour
    spec = importlib.util.spec_from_file_location("bench_vllm", BENCH / "bench_vllm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_differences_are_told_apart_by_whitespace_words_and_tags() -> None:
    tagged = 'Pain in <span class="bodyloc">left arm</span> today.'
    pairs = [
        (tagged, tagged),
        (tagged, 'Pain in <span class="bodyloc">left  arm</span> today. '),  # whitespace only
        (tagged, 'Pains in <span class="bodyloc">left arm</span> today.'),  # a word outside the tags
        (tagged, 'Pain in <span class="course">left arm</span> today.'),  # another label
        (tagged, 'Pain in left <span class="bodyloc">arm</span> today.'),  # another span
        (tagged, "Pain in left arm today."),  # the tag left out
    ]
    assert _bench().how_they_differ(pairs) == {"same": 1, "whitespace": 1, "words": 1, "tags": 3}
