"""Extractor families: one registry entry each, `kiwi train FAMILY` generated from its config."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from support import run_kiwi

from recommender.errors import ConfigError, ModelError
from recommender.extractors import FAMILIES, family, get_extractor_class
from recommender.extractors.base import BaseModelRef, file_checksum, least_confidence
from recommender.retraining import get_trainer


def test_a_family_is_found_by_registry_name_or_command() -> None:
    assert family("bert") is family("kiwi.encoder.v1")
    assert family("llama").name == "kiwi.llama.v1"
    with pytest.raises(ConfigError, match=r"unknown extractor \[gpt\]; known: kiwi.encoder.v1 \(bert\)"):
        family("gpt")
    with pytest.raises(ConfigError, match=r"\[gpt\]"):
        get_trainer("gpt")


def test_configs_load_without_torch() -> None:
    """The CLI builds every `kiwi train` command from the configs: they must not pull in torch."""
    code = (
        "import sys; from recommender.extractors import FAMILIES\n"
        "[f.config_class() for f in FAMILIES]\n"
        "import recommender.cli\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.command)
def test_train_help_lists_every_config_setting(fam) -> None:
    run = run_kiwi("train", fam.command, "--help", columns=400)
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stdout.split())
    for f in fields(fam.config_class()):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        assert flag in text, f"{fam.command}: {flag} missing from --help"
        if f.type in (bool, "bool"):
            assert f"--no-{flag[2:]}" in text


def test_every_family_declares_its_config() -> None:
    for fam in FAMILIES:
        if fam.command == "llama":
            pytest.importorskip("peft")
        assert get_extractor_class(fam.name).config_class is fam.config_class()


def test_kiwi_train_lexicon_from_the_sample_corpus(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "lexicon"
    run = run_kiwi("train", "lexicon", "--corpus", str(sample_dir), "--out", str(out), "--max-tokens", "4")
    assert run.returncode == 0, run.stderr
    info = json.loads((out / "kiwi_model.json").read_text(encoding="utf-8"))
    assert info["extractor"] == "kiwi.lexicon.v1" and info["config"]["max_tokens"] == 4
    assert f"to {out}" in " ".join(run.stderr.split())
    bad = run_kiwi("train", "lexicon", "--corpus", str(sample_dir), "--out", str(out), "--min-score", "2")
    assert bad.returncode == 2 and "min_score must be in [0, 1], got [2.0]" in bad.stderr


def test_base_model_checksum_refuses_other_weights(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"weights of a")
    b.write_bytes(b"weights of b")
    ref = BaseModelRef("some/base", file_checksum([a, b]))
    assert file_checksum([b, a]) == ref.sha256, "the order files are listed in does not matter"
    ref.verify([a, b])
    assert BaseModelRef.from_dict(ref.to_dict()) == ref
    b.write_bytes(b"weights of c")
    with pytest.raises(ModelError, match=r"base model \[some/base\] has checksum"):
        ref.verify([a, b])
    with pytest.raises(ModelError, match=r"must name \[name\] and \[sha256\]"):
        BaseModelRef.from_dict({"name": "x"})


def test_least_confidence() -> None:
    assert least_confidence([]) == 1.0
    assert least_confidence([1.0, 1.0]) == 0.0
    assert least_confidence([0.9, 0.5]) == pytest.approx(0.3)


def test_a_family_refuses_another_familys_config(tmp_path: Path) -> None:
    from recommender.extractors.encoder.config import EncoderConfig
    from recommender.extractors.lexicon import LexiconExtractor

    with pytest.raises(
        ConfigError, match=r"\[kiwi.lexicon.v1\] trains with a LexiconConfig, not \[EncoderConfig\]"
    ):
        LexiconExtractor.train([], config=EncoderConfig())
