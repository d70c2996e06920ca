"""bench/bench_vllm.py's account of how the two engines' generations differ, and how its vLLM server
(tests/vllm_cpu.py) is started and ended."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from support import bench_script
from vllm_cpu import VllmCpu


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
    counts = bench_script("bench_vllm").how_they_differ(pairs)
    assert counts == {"same": 1, "whitespace": 1, "words": 1, "tags": 3}


def test_speculation_drafts_like_the_in_process_engine_and_is_off_by_default(tmp_path: Path) -> None:
    plain = VllmCpu(tmp_path, tmp_path / "log")
    assert "--speculative-config" not in plain.command()
    command = VllmCpu(tmp_path, tmp_path / "log", prompt_lookup_tokens=8).command()
    spec = json.loads(command[command.index("--speculative-config") + 1])
    assert spec == {
        "method": "ngram",
        "num_speculative_tokens": 8,
        "prompt_lookup_max": 3,
        "prompt_lookup_min": 1,
    }


def test_a_server_ends_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    # the benchmark or test killed outright (no finally runs) must not leave its vLLM server behind
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER], cwd=Path(__file__).parent, stdout=subprocess.PIPE, text=True
    )
    assert starter.stdout is not None
    server = int(starter.stdout.readline())
    assert Path(f"/proc/{server}").exists()
    starter.kill()
    starter.wait()
    deadline = time.monotonic() + 10
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(server), "the started process outlived its starter"


STARTER = """
import subprocess, time
from vllm_cpu import _ends_with_parent
child = subprocess.Popen(["sleep", "60"], preexec_fn=_ends_with_parent)
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:  # a zombie (dead, not yet reaped by init) counts as ended
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_rows_without_the_re_pass_send_no_re_prompt_and_say_so() -> None:
    from recommender.corpora import load_sample

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[int, bool]] = []

        def predict(self, docs: list[Any], entities_given: bool = False) -> list[Any]:
            self.calls.append((len(docs), entities_given))
            return list(docs)

    gold = load_sample()[:3]
    bench = bench_script("bench_vllm")
    recorder = Recorder()
    row = bench.run(recorder, gold, 2, with_re=False)
    assert row["re_f1"] is None and recorder.calls == [(2, False), (1, False)]
    recorder.calls.clear()
    assert bench.run(recorder, gold, 2)["re_f1"] is not None
    assert recorder.calls == [(2, False), (1, False), (2, True), (1, True)]


def test_the_re_pass_runs_only_under_the_loads_and_levels_named() -> None:
    wants = bench_script("bench_vllm").wants_re
    assert wants("idle", 4, "idle,training", None) and wants("training", 16, "idle,training", None)
    assert not wants("training", 1, "idle", None)
    assert wants("idle", 16, "idle", "16") and not wants("idle", 1, "idle", "16")
    assert not wants("training", 16, "idle", "4,16")
