"""One global conftest: paths to shared data, the team's sample corpus, small hand-built documents."""

from __future__ import annotations

from pathlib import Path

import pytest
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
