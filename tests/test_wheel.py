"""The package installed from its built wheel, away from the checkout: what it reads at run time ships in it.

The wheel goes into a fresh venv that sees this interpreter's installed dependencies (torch is not
installed twice) but not the checkout: the commands run from an empty folder with no PYTHONPATH.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from support import predict_labels, wait_healthy

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a venv holding only the built wheel, its dependencies taken from this one."""
    pytest.importorskip("hatchling", reason="the wheel is built with hatchling (dev extra), not installed")
    root = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root, REPO],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = root.glob("kiwi_recommender-*.whl")
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    # This interpreter's site-packages after the venv's own, without its .pth files: no editable hook.
    site = env_dir / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    bin_dir = env_dir / "bin"
    pip = [sys.executable, "-m", "pip", "--python", str(bin_dir / "python")]
    install = subprocess.run([*pip, "install", "-q", "--no-deps", "--no-index", wheel], capture_output=True)
    assert install.returncode == 0, install.stderr
    return bin_dir


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIWI_") and k != "PYTHONPATH"}
    return env | {"HOME": str(tmp_path), "KIWI_SEED_FETCH": "false", "KIWI_RETRAIN": "false"}


def test_the_installed_package_reads_its_data_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    probe = (
        "import recommender, recommender.corpora as c, recommender.schema as s\n"
        "from recommender.extractors.llama.task import Templates\n"
        "print(recommender.__file__)\n"
        "print(c.SAMPLE_DIR)\n"
        "print(len(list(c.SAMPLE_DIR.glob('*.ann'))), len(c.load_split()['dev']))\n"
        "print(len(s.load_schema().label_names), len(Templates.packaged().texts))\n"
    )
    run = subprocess.run(
        [installed / "python", "-c", probe], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    module, sample, counts, schema = run.stdout.splitlines()
    venv_dir = str(installed.parent)
    assert module.startswith(venv_dir) and not module.startswith(str(REPO))
    assert sample.startswith(venv_dir) and sample.endswith("recommender/_data/corpora/sample")
    assert counts == "4 16"  # the 4 sample notes; the 16 development notes of the MTSamples split
    assert schema == "20 5"  # 4 entity + 16 modifier types; one NER and four RE prompt templates


def test_the_installed_kiwi_schema_writes_the_checked_in_guidelines(installed: Path, tmp_path: Path) -> None:
    """The guideline prose (annotation_guidelines/templates/) ships in the wheel, rendering the same bytes."""
    out = tmp_path / "guidelines"
    run = subprocess.run(
        [installed / "kiwi", "schema", "--out", out],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    written = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert Path("guideline.md") in written and Path("inception/README.md") in written
    for rel in written:
        assert (out / rel).read_bytes() == (REPO / "annotation_guidelines" / rel).read_bytes(), rel


def test_the_installed_kiwi_bootstraps_a_model_and_serves_it(installed: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = _env(tmp_path) | {"KIWI_TRAINER": "kiwi.lexicon.v1"}
    cmd = [
        installed / "kiwi",
        "serve",
        "--bootstrap",
        "--model-dir",
        tmp_path / "models",
        "--port",
        str(port),
    ]
    server = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, server, 180, what="the installed kiwi")
        predict_labels(base)
    finally:
        server.terminate()
        server.wait(timeout=30)
    said = " ".join((server.stdout.read() if server.stdout else "").split())
    # the offline seed: the generated notes plus the 4 sample notes read from the wheel
    assert "Training kiwi.lexicon.v1" in said and "as the baseline" in said, said
    listing = subprocess.run(
        [installed / "kiwi", "corpus", "list"],
        cwd=tmp_path,
        env=env | {"COLUMNS": "400"},  # rich wraps the table to the terminal's width otherwise
        capture_output=True,
        text=True,
    )
    assert listing.returncode == 0, listing.stderr
    assert str(installed.parent) in listing.stdout  # the sample corpus is the wheel's copy
