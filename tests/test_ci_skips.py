"""No silent skips in CI: a real component that is missing skips a test on a laptop and fails the run,
naming the component, with CI=true; the setup scripts fail the same way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SCRIPTS = TESTS.parent / "scripts"
NEEDS_A_WIDGET = """
from support import require_module, require_or_skip

def test_with_a_widget():
    require_or_skip("Widget", "not installed (make widget)")

def test_with_a_widget_module():
    require_module("kiwi_widget_that_is_not_there", "Widget", "make widget")
"""


def _env(ci: bool, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | extra
    return env | {"CI": "true"} if ci else env


@pytest.mark.parametrize("ci", [False, True], ids=["laptop", "ci"])
def test_a_missing_component_skips_on_a_laptop_and_fails_by_name_in_ci(tmp_path: Path, ci: bool) -> None:
    (tmp_path / "test_widget.py").write_text(NEEDS_A_WIDGET)
    pythonpath = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=_env(ci, PYTHONPATH=pythonpath),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if ci:
        assert run.returncode == 1, run.stdout
        assert "2 failed" in run.stdout
        first, second = [x for x in run.stdout.splitlines() if x.startswith("FAILED")]
        assert first.endswith("CI needs Widget: not installed (make widget)")
        assert "CI needs Widget: cannot import kiwi_widget_that_is_not_there" in second
        assert second.endswith("; make widget")
    else:
        assert run.returncode == 0, run.stdout
        assert "2 skipped" in run.stdout and "Widget: not installed (make widget)" in run.stdout


def _script(tmp_path: Path, name: str, fakes: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """``scripts/name`` copied into a scratch checkout (its caches land there), and a PATH where the
    ``fakes`` (command: bash body) come first."""
    (tmp_path / "repo" / "scripts").mkdir(parents=True)
    script = tmp_path / "repo" / "scripts" / name
    shutil.copy(SCRIPTS / name, script)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command, body in fakes.items():
        (bin_dir / command).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / command).chmod(0o755)
    return script, {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("ci", [False, True], ids=["laptop", "ci"])
def test_setup_external_fails_naming_what_it_could_not_install_in_ci(tmp_path: Path, ci: bool) -> None:
    # No Python to make Label Studio's venv with, and not root (so no apt-get for Chromium).
    script, path = _script(tmp_path, "setup_external.sh", {"python3.11": "exit 1", "id": "echo 1000"})
    run = subprocess.run(
        ["bash", str(script)], env=_env(ci, **path), capture_output=True, text=True, timeout=60
    )
    chromium_here = shutil.which("chromium") is not None
    if ci:
        assert run.returncode == 1, run.stdout + run.stderr
        expected = ["Label Studio"] + ([] if chromium_here else ["Chromium"])
        named = [x.split(": ")[1].removeprefix("CI needs ") for x in run.stderr.splitlines()]
        assert named == expected, run.stderr
    else:
        assert run.returncode == 0, run.stdout + run.stderr
        assert "Label Studio: label-studio==" in run.stdout and "will skip" in run.stdout


@pytest.mark.parametrize("ci", [False, True], ids=["laptop", "ci"])
def test_images_fails_naming_podman_in_ci_when_it_cannot_build(tmp_path: Path, ci: bool) -> None:
    script, path = _script(tmp_path, "images.sh", {"id": "echo 1000"})  # rootful podman needs root
    run = subprocess.run(
        ["bash", str(script)], env=_env(ci, **path), capture_output=True, text=True, timeout=60
    )
    if ci:
        assert run.returncode == 1
        assert (
            run.stderr.strip()
            == "images: CI needs podman: not root, and rootful podman is needed to build here"
        )
    else:
        assert run.returncode == 0 and "the image tests will skip" in run.stdout
