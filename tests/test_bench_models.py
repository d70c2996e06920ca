"""bench/bench_models.py's --reuse: a reused model must be the one the run would train (its config, its
training data, its validation notes), else the run refuses naming what differs."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import bench_script, tiny_bert

from recommender.synthetic import generate


def test_reuse_accepts_the_same_run_and_refuses_another_by_name(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from recommender.extractors.encoder import EncoderConfig, train_encoder

    bench = bench_script("bench_models")
    docs = generate(14, seed=5)  # enough for validation notes of their own (2 of 14)
    config = EncoderConfig(
        base_model=str(tiny_bert(tmp_path / "bert")), max_length=64, window_overlap=16, epochs=1,
        batch_size=4, precision="fp32",
    )  # fmt: skip
    train_encoder(docs, [], config, tmp_path / "model")
    assert bench.selection(docs)["validation_notes"] == 2
    assert bench.reuse_mismatches(tmp_path / "model", config.to_dict(), docs) == []

    # where and how often a run saves is not what it learnt (the LLaMA's run resumes across sessions)
    saving = {**config.to_dict(), "checkpoint_steps": 10}
    assert bench.reuse_mismatches(tmp_path / "model", saving, docs) == []

    longer = {**config.to_dict(), "epochs": 3}
    (why,) = bench.reuse_mismatches(tmp_path / "model", longer, docs)
    assert why == "[epochs] is 1, this run asks for 3"

    other = bench.reuse_mismatches(tmp_path / "model", config.to_dict(), generate(14, seed=6))
    assert len(other) == 2
    assert other[0].startswith("training data fingerprint [") and other[1].startswith("validation notes [")


def test_reuse_of_a_family_that_selects_nothing_checks_its_config_and_data(tmp_path: Path) -> None:
    from recommender.extractors.lexicon import LexiconConfig, LexiconExtractor

    bench = bench_script("bench_models")
    docs = generate(14, seed=5)
    LexiconExtractor.train(docs).save(tmp_path / "lexicon")
    config = LexiconConfig().to_dict()
    assert bench.reuse_mismatches(tmp_path / "lexicon", config, docs, selects=False) == []
    # a family that should have selected on validation notes and recorded none is refused
    (why,) = bench.reuse_mismatches(tmp_path / "lexicon", config, docs, selects=True)
    assert why.startswith("validation notes [unrecorded]")
    (why,) = bench.reuse_mismatches(tmp_path / "lexicon", {**config, "max_tokens": 6}, docs, selects=False)
    assert why == "[max_tokens] is 8, this run asks for 6"
