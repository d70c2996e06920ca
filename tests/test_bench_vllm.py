"""bench/bench_vllm.py's account of how the two engines' generations differ."""

from __future__ import annotations

from support import bench_script


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
