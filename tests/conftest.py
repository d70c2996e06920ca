"""One global conftest: paths to shared data, the team's sample corpus, small hand-built documents."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from recommender.cores import apply_process_policy

# Before anything imports torch: OpenMP reads its environment once, and the processes the tests
# start inherit it (recommender/cores.py).
apply_process_policy()
# Before anything imports huggingface_hub, which reads it once: tests never reach the hub.
os.environ["HF_HUB_OFFLINE"] = "1"

import httpx
from lsserver import running_label_studio
from pgserver import LocalPostgres, start_or_skip
from support import emoji_note

from recommender.corpora import SAMPLE_DIR, SHARED_MTSAMPLES
from recommender.document import Document

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared material sits beside the team's checkouts only")
    return path


@pytest.fixture(scope="session")
def mtsamples_dir() -> Path:
    return _need(SHARED_MTSAMPLES)


@pytest.fixture(scope="session")
def mtsamples_docs(mtsamples_dir: Path) -> list[Document]:
    from recommender.formats import brat

    return brat.read(mtsamples_dir)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return _need(FIXTURES)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture
def emoji_doc() -> Document:
    """A note with characters outside the BMP before, inside and after annotations."""
    return emoji_note()


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A real PostgreSQL server on loopback for the whole session (skips when it cannot start).
    Its folder is outside pytest's, which pytest keeps private to root (PostgreSQL runs as another
    user when the tests run as root)."""
    folder = Path(tempfile.mkdtemp(prefix="kiwi-postgres-"))
    try:
        server = start_or_skip(folder)
        yield server
        server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A real Label Studio for the whole session (skips when its venv is absent): a client of its API
    with the token ``lsserver.LS_TOKEN``. Each test makes its own project."""
    with running_label_studio(tmp_path_factory.mktemp("labelstudio")) as client:
        yield client


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/db/corrections.sqlite3"
    return request.getfixturevalue("postgres").new_database()
