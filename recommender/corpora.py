"""Known corpora: the team's synthetic sample, the shared MTSamples split, and the public Kiwi release."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from recommender.document import Document
from recommender.errors import ConfigError, DocumentError, NotFoundError
from recommender.formats import brat
from recommender.packaged import CHECKOUT, packaged_path

# The splits live in recommender/splits.py (the trainers use them too); named here for the callers
# that read a corpus and split it.
from recommender.splits import MIN_NOTES_FOR_DEV as MIN_NOTES_FOR_DEV
from recommender.splits import development_split as development_split
from recommender.splits import load_split as load_split
from recommender.splits import split_documents as split_documents
from recommender.splits import validation_split as validation_split

SAMPLE_DIR = packaged_path("corpora/sample")
# Where the shared MTSamples training notes live beside a checkout (CI and the team's machines).
SHARED_MTSAMPLES = CHECKOUT.parent / "shared" / "corpora" / "mtsamples" / "train"
KIWI_GITHUB_REPO = "https://api.github.com/repos/BIDS-Xu-Lab/Kiwi-LLaMA"
# Where the repository keeps each split as brat (GitHub contents API paths).
KIWI_SPLITS = {"train": "data/train/MTSample/brat"}
KIWI_CITATION = (
    "Hu Y, et al. Information Extraction from Clinical Notes: Are We Ready to Switch to Large Language "
    "Models? arXiv:2411.10020 (2024)"
)
FETCH_MANIFEST = "FETCHED.json"


@dataclass(frozen=True)
class CorpusInfo:
    name: str
    description: str
    location: str


def known_corpora() -> list[CorpusInfo]:
    return [
        CorpusInfo("sample", "synthetic notes written by the team, in the Kiwi schema", str(SAMPLE_DIR)),
        CorpusInfo("mtsamples", "96 annotated MTSamples notes (Kiwi train split)", str(SHARED_MTSAMPLES)),
        CorpusInfo(
            "kiwi-mtsamples",
            "the public Kiwi MTSamples corpus on GitHub",
            f"{KIWI_GITHUB_REPO}/contents/{KIWI_SPLITS['train']}",
        ),
    ]


def mtsamples_dir() -> Path:
    if not SHARED_MTSAMPLES.is_dir():
        raise NotFoundError(
            "the shared MTSamples corpus is not beside this checkout; use `kiwi corpus fetch` or --corpus",
            source=SHARED_MTSAMPLES,
        )
    return SHARED_MTSAMPLES


def load_sample() -> list[Document]:
    return brat.read(SAMPLE_DIR)


SYNTHETIC_NOTES = 300


def synthetic_seed() -> list[Document]:
    """The offline seed: the hand-written sample notes and the generated synthetic corpus."""
    from recommender.synthetic import generate

    return load_sample() + generate(SYNTHETIC_NOTES)


@dataclass(frozen=True)
class Fetched:
    folder: Path
    notes: int
    licence: str
    manifest: Path


def git_blob_sha(data: bytes) -> str:
    """The ``sha`` GitHub's contents API gives a file: SHA-1 of the git blob."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's own hash, not for security


def _get(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.github+json"})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return r.read()


def fetch_kiwi(
    out: Path, split: str = "train", *, api: str = KIWI_GITHUB_REPO, timeout: float = 20.0
) -> Fetched:
    """Download the public Kiwi MTSamples ``split`` (brat) into ``out``, checking every file against
    the SHA-1 and size of the repository listing; writes ``FETCHED.json`` (source, licence, citation,
    per-file git SHA-1 and SHA-256). Files appear in ``out`` only once all of them arrived intact."""
    if split not in KIWI_SPLITS:
        raise ConfigError(f"no known location for split [{split}]; known: {', '.join(KIWI_SPLITS)}")
    listing_url = f"{api}/contents/{KIWI_SPLITS[split]}"
    files: list[dict[str, object]] = []
    try:
        listing = json.loads(_get(listing_url, timeout))
        if not isinstance(listing, list):
            raise DocumentError("the listing is not a folder listing", source=listing_url)
        with tempfile.TemporaryDirectory() as tmp:
            for item in listing:
                if item.get("type") != "file" or not item["name"].endswith((".txt", ".ann")):
                    continue
                data = _get(item["download_url"], timeout)
                if len(data) != item["size"] or git_blob_sha(data) != item["sha"]:
                    raise DocumentError(
                        f"[{item['name']}] does not match the listing's size and SHA-1", source=listing_url
                    )
                (Path(tmp) / item["name"]).write_bytes(data)
                files.append(
                    {"name": item["name"], "size": len(data), "git_sha1": item["sha"],
                     "sha256": hashlib.sha256(data).hexdigest()}
                )  # fmt: skip
            if not files:
                raise DocumentError("the listing names no brat files", source=listing_url)
            licence = _licence(api, timeout)
            out.mkdir(parents=True, exist_ok=True)
            for f in Path(tmp).iterdir():
                shutil.move(str(f), out / f.name)
    except (urllib.error.URLError, TimeoutError, OSError, json.JSONDecodeError) as e:
        reason = getattr(e, "reason", e)
        raise NotFoundError(
            f"cannot download the Kiwi corpus ({reason}); this needs internet access to GitHub",
            source=listing_url,
        ) from None
    manifest = out / FETCH_MANIFEST
    manifest.write_text(
        json.dumps(
            {"source": listing_url, "split": split, "licence": licence, "citation": KIWI_CITATION,
             "fetched": datetime.now(UTC).isoformat(timespec="seconds"), "files": files},
            indent=1,
        ),
        encoding="utf-8",
    )  # fmt: skip
    return Fetched(out, sum(1 for f in files if str(f["name"]).endswith(".txt")), licence, manifest)


def _licence(api: str, timeout: float) -> str:
    """The repository's licence as GitHub states it; the corpus is used under its terms."""
    try:
        info = json.loads(_get(f"{api}/license", timeout))
        lic = info.get("license") or {}
        return f"{lic.get('name') or lic.get('spdx_id') or 'unnamed'} ({info.get('html_url', api)})"
    except (urllib.error.URLError, TimeoutError, OSError, json.JSONDecodeError, AttributeError):
        return f"not stated by the API: read the repository's terms ({api})"


def fetched_corpus(folder: Path) -> Path | None:
    """``folder`` when it holds a complete fetch (its manifest and every file it names), else None."""
    manifest = folder / FETCH_MANIFEST
    if not manifest.is_file():
        return None
    files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    return folder if all((folder / f["name"]).is_file() for f in files) else None
