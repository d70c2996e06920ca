"""bench/bench_re_levers.py on a tiny Llama: each arm trains with its own settings from the same seed and
is reported from what it actually trained on (examples per kind, rank) and its own validation score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import bench_script

from recommender.synthetic import generate


def test_parse_arm_names_a_malformed_setting() -> None:
    bench = bench_script("bench_re_levers")
    assert bench.parse_arm("rank_64:lora_r=64, lora_alpha=256") == (
        "rank_64",
        {"lora_r": "64", "lora_alpha": "256"},
    )
    assert bench.parse_arm("paper:") == ("paper", {})
    with pytest.raises(SystemExit, match=r"\[lora_r\] is not KEY=VALUE"):
        bench.parse_arm("x:lora_r")


def test_arms_differ_only_in_their_settings_and_report_what_they_trained_on(tmp_path: Path) -> None:
    from test_llama_training import build_tiny_base

    bench = bench_script("bench_re_levers")
    docs = generate(14, seed=5)  # 2 of the 14 are validation notes
    base = build_tiny_base(tmp_path / "base", docs)
    small = {"base": str(base), "batch_size": "2", "grad_accum": "2", "max_new_tokens": "16"}
    rows = {}
    for spec in ("paper:", "re_weighted:ner_fraction=0.25", "rank_8:lora_r=8,lora_alpha=32"):
        name, sets = bench.parse_arm(spec)
        config = bench.arm_config(sets, 8, small)
        assert (config.epochs, config.max_examples) == (1, 8)
        bench.train_arm(docs, config, tmp_path / name)
        rows[name] = bench.arm_row(name, tmp_path / name, docs)

    for row in rows.values():
        assert row["steps"] == 2  # 8 examples, 4 per optimizer step
        assert row["ner_examples"] + row["re_examples"] == 8
        assert 0.0 <= row["validation_ner"] <= 1.0 and 0.0 <= row["validation_re"] <= 1.0
    assert (rows["re_weighted"]["ner_examples"], rows["re_weighted"]["re_examples"]) == (2, 6)
    adapter = json.loads((tmp_path / "rank_8" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == rows["rank_8"]["settings"]["lora_r"] == 8
    assert rows["paper"]["settings"]["lora_r"] == 16
