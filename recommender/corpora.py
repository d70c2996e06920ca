"""Known corpora: the team's synthetic sample, the shared MTSamples split, and the public Kiwi release."""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from recommender.document import Document
from recommender.errors import NotFoundError
from recommender.formats import brat

REPO = Path(__file__).resolve().parents[1]
CORPORA_DIR = REPO / "corpora"
SAMPLE_DIR = CORPORA_DIR / "sample"
SPLIT_FILE = CORPORA_DIR / "mtsamples_split.json"
# Where the shared MTSamples training notes live beside a checkout (CI and the team's machines).
SHARED_MTSAMPLES = REPO.parent / "shared" / "corpora" / "mtsamples" / "train"
KIWI_GITHUB = "https://api.github.com/repos/BIDS-Xu-Lab/Kiwi-LLaMA/contents"


@dataclass(frozen=True)
class CorpusInfo:
    name: str
    description: str
    location: str


def known_corpora() -> list[CorpusInfo]:
    return [
        CorpusInfo("sample", "synthetic notes written by the team, in the Kiwi schema", str(SAMPLE_DIR)),
        CorpusInfo("mtsamples", "96 annotated MTSamples notes (Kiwi train split)", str(SHARED_MTSAMPLES)),
        CorpusInfo("kiwi-mtsamples", "the public Kiwi MTSamples corpus on GitHub", KIWI_GITHUB),
    ]


def load_split() -> dict[str, list[str]]:
    """The fixed development split of the 96 MTSamples notes (see corpora/README.md)."""
    data = json.loads(SPLIT_FILE.read_text(encoding="utf-8"))
    return {"train": data["train"], "dev": data["dev"]}


def split_documents(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    """(train, dev) by the fixed split; notes not named in it go to train."""
    dev_ids = set(load_split()["dev"])
    return [d for d in docs if d.id not in dev_ids], [d for d in docs if d.id in dev_ids]


def development_split(
    docs: list[Document], source: Path | None = None
) -> tuple[list[Document], list[Document]]:
    """(train, dev) for training a model on ``docs`` read from ``source`` when no dev set is given."""
    if source is not None and source.resolve() == SHARED_MTSAMPLES.resolve():
        return split_documents(docs)
    ordered = sorted(docs, key=lambda d: d.id)  # deterministic: every sixth note by id
    return (
        [d for i, d in enumerate(ordered) if i % 6 != 5],
        [d for i, d in enumerate(ordered) if i % 6 == 5],
    )


def mtsamples_dir() -> Path:
    if not SHARED_MTSAMPLES.is_dir():
        raise NotFoundError(
            "the shared MTSamples corpus is not beside this checkout; use `kiwi corpus fetch` or --corpus",
            source=SHARED_MTSAMPLES,
        )
    return SHARED_MTSAMPLES


def load_sample() -> list[Document]:
    return brat.read(SAMPLE_DIR)


def fetch_kiwi(out: Path, split: str = "train", timeout: float = 20.0) -> int:
    """Download the public Kiwi MTSamples ``split`` as brat into ``out``; returns the note count."""
    listing_url = f"{KIWI_GITHUB}/data/mtsamples/{split}"
    try:
        with urllib.request.urlopen(listing_url, timeout=timeout) as r:
            listing = json.load(r)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            for item in listing:
                if item.get("type") == "file" and item["name"].endswith((".txt", ".ann")):
                    with urllib.request.urlopen(item["download_url"], timeout=timeout) as r:
                        (Path(tmp) / item["name"]).write_bytes(r.read())
            for f in Path(tmp).iterdir():
                shutil.move(str(f), out / f.name)
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise NotFoundError(
            f"cannot download the Kiwi corpus ({reason}); this needs internet access to GitHub",
            source=listing_url,
        ) from None
    return len(list(out.glob("*.txt")))
