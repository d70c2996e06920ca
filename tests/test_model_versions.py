"""The model versions: versions, atomic promotion, rollback, rejection, and the `kiwi models` commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recommender.cli import app
from recommender.errors import ConfigError, NotFoundError
from recommender.extractors.base import ModelInfo
from recommender.model_versions import REGISTRY_FILE, STAGING_DIR, ModelVersions


def _model(folder: Path, version: str, f1: float = 0.5) -> Path:
    ModelInfo(extractor="kiwi.lexicon.v1", version=version, metrics={"ner": {"exact": {"f1": f1}}}).save(
        folder
    )
    (folder / "weights.bin").write_bytes(b"w" * 10)
    return folder


def test_add_promote_rollback_reject(tmp_path: Path) -> None:
    reg = ModelVersions(tmp_path / "models")
    assert reg.current() is None and reg.versions() == []
    v1 = reg.add(_model(tmp_path / "a", "m1"))
    v2 = reg.add(_model(tmp_path / "b", "m2"))
    assert (v1, v2) == ("m1", "m2")
    assert (tmp_path / "a").is_dir()  # a folder outside staging is copied, not moved
    assert reg.promote("m1") == tmp_path / "models" / "m1"
    reg.promote("m2")
    assert reg.current_version() == "m2"
    assert {v.version: v.status for v in reg.versions()} == {"m1": "previous", "m2": "promoted"}
    assert reg.rollback() == "m1"
    assert reg.current() == tmp_path / "models" / "m1"
    statuses = {v.version: (v.status, v.reason) for v in reg.versions()}
    assert statuses == {"m1": ("promoted", None), "m2": ("rejected", "rolled back")}
    with pytest.raises(NotFoundError, match="roll back"):
        reg.rollback()
    with pytest.raises(ConfigError, match=r"\[m1\]"):
        reg.reject("m1", "worse")
    with pytest.raises(NotFoundError, match=r"\[nope\]"):
        reg.promote("nope")
    # The pointer survives a new ModelVersions object (another process).
    assert ModelVersions(tmp_path / "models").current_version() == "m1"
    assert [e["action"] for e in reg.events()] == ["add", "add", "promote", "promote", "rollback"]


def test_same_version_name_gets_a_suffix_and_info_follows(tmp_path: Path) -> None:
    reg = ModelVersions(tmp_path / "models")
    assert reg.add(_model(tmp_path / "a", "m")) == "m"
    second = reg.add(_model(tmp_path / "b", "m"))
    assert second == "m-2"
    assert ModelInfo.load(reg.path("m-2")).version == "m-2"


def test_staged_candidate_is_moved_and_failed_one_vanishes(tmp_path: Path) -> None:
    reg = ModelVersions(tmp_path / "models")
    with reg.staging() as tmp:
        v = reg.add(_model(tmp, "cand"))
        assert not tmp.exists()
    assert (reg.path(v) / "weights.bin").is_file()
    with pytest.raises(RuntimeError), reg.staging() as tmp:
        _model(tmp, "broken")
        raise RuntimeError("training crashed")
    assert [v.version for v in reg.versions()] == ["cand"]
    assert list((tmp_path / "models" / STAGING_DIR).iterdir()) == []


def test_leftovers_of_dead_processes_are_cleaned(tmp_path: Path) -> None:
    """A staging folder whose lease nobody holds is a dead builder's; one being built stays, whatever
    process id its name or its builder has (another container's ids mean nothing here)."""
    reg = ModelVersions(tmp_path / "models")
    dead = tmp_path / "models" / STAGING_DIR / "999999999-abc"
    unlocked = tmp_path / "models" / STAGING_DIR / "cafe"
    _model(dead, "half")
    _model(unlocked, "half")
    (unlocked.parent / "cafe.lease").touch()
    with reg.staging() as building:
        _model(building, "building")
        ModelVersions(tmp_path / "models")
        assert building.exists()
    assert not dead.exists() and not unlocked.exists()
    assert list((tmp_path / "models" / STAGING_DIR).iterdir()) == []
    assert reg.versions() == []


def test_registry_file_is_replaced_not_rewritten(tmp_path: Path) -> None:
    reg = ModelVersions(tmp_path / "models")
    reg.add(_model(tmp_path / "a", "m1"))
    reg.promote("m1")
    before = os.stat(tmp_path / "models" / REGISTRY_FILE).st_ino
    reg.add(_model(tmp_path / "b", "m2"))
    assert os.stat(tmp_path / "models" / REGISTRY_FILE).st_ino != before
    data = json.loads((tmp_path / "models" / REGISTRY_FILE).read_text())
    assert data["promoted"] == "m1" and data["stack"] == ["m1"]
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".registry-")]


def test_cli_list_promote_rollback(tmp_path: Path) -> None:
    models = tmp_path / "models"
    reg = ModelVersions(models)
    reg.add(_model(tmp_path / "a", "m1", 0.4))
    reg.add(_model(tmp_path / "b", "m2", 0.6))
    runner = CliRunner()
    out = runner.invoke(app, ["models", "promote", "m1", "--model-dir", str(models)])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["models", "promote", "m2", "--model-dir", str(models)])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["models", "list", "--model-dir", str(models)])
    assert out.exit_code == 0
    assert "m1" in out.output and "promoted" in out.output and "0.600" in out.output
    out = runner.invoke(app, ["models", "list", "--model-dir", str(models), "--json"])
    rows = json.loads(out.output)
    assert [(r["version"], r["status"]) for r in rows] == [("m1", "previous"), ("m2", "promoted")]
    out = runner.invoke(app, ["models", "rollback", "--model-dir", str(models)])
    assert out.exit_code == 0 and "m1" in out.output
    assert reg.current_version() == "m1"
    out = runner.invoke(app, ["models", "promote", "zzz", "--model-dir", str(models)])
    assert out.exit_code != 0
