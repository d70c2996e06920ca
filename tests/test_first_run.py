"""The first run: the seed corpus (fetched, or the generated synthetic one), the one rule for
development splits, "not measured" instead of 0.0, and progress lines where no terminal shows a bar."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from recommender import corpora, splits
from recommender.document import Document
from recommender.errors import DocumentError, NotFoundError
from recommender.formats import brat
from recommender.model_versions import ModelVersions
from recommender.progress import reporting
from recommender.retraining import bootstrap, decide, default_corpora, training_data
from recommender.schema import load_schema
from recommender.settings import Settings
from recommender.synthetic import generate


# --- the synthetic corpus ------------------------------------------------------------------------
def test_synthetic_corpus_covers_the_schema_and_is_reproducible() -> None:
    docs = generate(120, seed=3)
    schema = load_schema()
    labels = Counter(s.label for d in docs for s in d.spans)
    assert set(labels) == set(schema.label_names)  # all 20 span types
    pairs = set()
    for d in docs:
        spans = d.span_index()
        pairs |= {(spans[r.head].label, spans[r.tail].label) for r in d.relations}
    assert pairs == set(schema.pairs)  # every allowed hasAttr pair
    assert len({d.text for d in docs}) == len(docs)  # varied, no note twice
    again = generate(120, seed=3)
    assert [(d.text, [s.key for s in d.spans]) for d in docs] == [
        (d.text, [s.key for s in d.spans]) for d in again
    ]
    assert generate(5, seed=4)[0].text != docs[0].text


# --- development splits --------------------------------------------------------------------------
def _notes(ids: list[str]) -> list[Document]:
    return [Document(id=i, text=f"note {i}") for i in ids]


def test_mtsamples_notes_get_the_documented_split_from_any_folder(tmp_path: Path) -> None:
    split = corpora.load_split()
    train, dev = corpora.development_split(_notes(split["train"] + split["dev"]), tmp_path / "a_copy")
    assert sorted(d.id for d in dev) == sorted(split["dev"]) and len(train) == 80
    # A part of them, read from anywhere: a documented dev note never lands in train.
    some = split["train"][:20] + split["dev"][:3]
    train, dev = corpora.development_split(_notes(some), None)
    assert {d.id for d in dev} == set(split["dev"][:3])
    # The generic rule is the one the documented split was drawn by: it gives the same 16.
    renamed = [Document(id=i, text=i) for i in split["train"] + split["dev"]]
    k = round(len(renamed) / 6)
    assert {d.id for d in sorted(renamed, key=lambda d: splits._id_hash(d.id))[:k]} == set(split["dev"])


def test_other_corpora_split_by_id_hash_and_small_ones_are_not_measured() -> None:
    docs = _notes([f"n{i:03d}" for i in range(60)])
    train, dev = corpora.development_split(docs)
    assert len(dev) == 10 and not {d.id for d in train} & {d.id for d in dev}
    shuffled, _ = corpora.development_split(list(reversed(docs)))
    assert {d.id for d in dev} == {d.id for d in docs} - {d.id for d in shuffled}  # order does not matter
    small = docs[: corpora.MIN_NOTES_FOR_DEV - 1]
    assert corpora.development_split(small) == (small, [])


def test_the_documented_validation_notes_are_the_next_twelve_by_hash() -> None:
    split = corpora.load_split()
    assert set(split["validation"]) <= set(split["train"]) and len(split["validation"]) == 12
    ordered = sorted(split["train"] + split["dev"], key=splits._id_hash)
    assert set(ordered[16:28]) == set(split["validation"])
    fit, validation = corpora.validation_split(_notes(split["train"] + ["a-correction"]))
    assert {d.id for d in validation} == set(split["validation"])
    assert len(fit) == 69 and "a-correction" in {d.id for d in fit}


def test_other_corpora_get_validation_notes_by_id_hash_and_small_ones_none() -> None:
    docs = _notes([f"n{i:03d}" for i in range(40)])
    fit, validation = corpora.validation_split(docs)
    assert len(validation) == 6 and not {d.id for d in fit} & {d.id for d in validation}
    _, again = corpora.validation_split(list(reversed(docs)))
    assert {d.id for d in again} == {d.id for d in validation}
    small = docs[: splits.MIN_NOTES_FOR_VALIDATION - 1]
    assert corpora.validation_split(small) == (small, [])


def test_the_gate_says_not_measured() -> None:
    first = decide({}, None, 0.0)
    assert first == (True, "the first model: promoted as the baseline")
    promote, reason = decide({}, {}, 0.0)
    assert promote and reason.startswith("not measured")


# --- fetching the public corpus (a local server that answers like GitHub's contents API) ---------
def _github_listing(folder: Path, base: str) -> list[dict[str, object]]:
    """A contents-API listing of ``folder`` in GitHub's shape (name, path, sha, size, download_url)."""
    path = corpora.KIWI_SPLITS["train"]
    out = []
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        out.append(
            {
                "name": f.name,
                "path": f"{path}/{f.name}",
                "sha": corpora.git_blob_sha(data),
                "size": len(data),
                "url": f"{base}/contents/{path}/{f.name}?ref=main",
                "download_url": f"{base}/raw/{f.name}",
                "type": "file",
            }
        )
    return [*out, {"name": "docs", "path": f"{path}/docs", "type": "dir", "size": 0}]


@pytest.fixture
def github(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, bytes]]]:
    """(API base URL, the served brat folder, overrides of served bytes) of a local GitHub stand-in
    serving 30 of the team's synthetic notes (never MTSamples text)."""
    served = tmp_path / "served"
    brat.write(generate(30, seed=11), served)
    tampered: dict[str, bytes] = {}
    state: dict[str, list[dict[str, object]]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == f"/repos/x/kiwi/contents/{corpora.KIWI_SPLITS['train']}":
                body = json.dumps(state["listing"]).encode()
            elif self.path == "/repos/x/kiwi/license":
                body = json.dumps(
                    {"license": {"spdx_id": "X-TEST", "name": "Test licence"}, "html_url": "http://l"}
                ).encode()
            elif self.path.startswith("/repos/x/kiwi/raw/"):
                name = self.path.rsplit("/", 1)[1]
                body = tampered.get(name) or (served / name).read_bytes()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    base = f"http://127.0.0.1:{server.server_address[1]}/repos/x/kiwi"
    state["listing"] = _github_listing(served, base)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base, served, tampered
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_checks_every_file_and_records_the_source(github, tmp_path: Path) -> None:
    base, served, tampered = github
    got = corpora.fetch_kiwi(tmp_path / "out", api=base)
    assert got.notes == 30 and "Test licence" in got.licence
    assert sorted(p.name for p in served.iterdir()) == sorted(
        p.name for p in (tmp_path / "out").iterdir() if p.name != corpora.FETCH_MANIFEST
    )
    manifest = json.loads(got.manifest.read_text())
    assert manifest["citation"] == corpora.KIWI_CITATION and len(manifest["files"]) == 60
    assert corpora.fetched_corpus(tmp_path / "out") == tmp_path / "out"

    name = next(p.name for p in served.iterdir() if p.suffix == ".ann")
    tampered[name] = b"T1\tproblem 0 4\tfake\n"
    with pytest.raises(DocumentError, match=rf"\[{name}\]"):
        corpora.fetch_kiwi(tmp_path / "bad", api=base)
    assert not (tmp_path / "bad").exists()  # nothing half-written
    with pytest.raises(NotFoundError, match="internet"):
        corpora.fetch_kiwi(tmp_path / "none", api="http://127.0.0.1:9/repos/x/kiwi", timeout=2)


def _first_run_settings(tmp_path: Path, api: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setattr(training_data, "SHARED_MTSAMPLES", tmp_path / "no_shared_here")
    return Settings(model_dir=tmp_path / "models", trainer="kiwi.lexicon.v1", corpus_api=api, retrain=False)


def test_bootstrap_fetches_trains_and_caches(github, tmp_path: Path, monkeypatch) -> None:
    base, _, _ = github
    settings = _first_run_settings(tmp_path, base, monkeypatch)
    lines: list[str] = []
    path = bootstrap(settings, ModelVersions(settings.model_dir), say=lines.append)
    text = "\n".join(lines)
    assert "Fetched 30 notes" in text and "Test licence" in text and corpora.KIWI_CITATION in text
    assert "25 notes of the public MTSamples notes" in text  # 5 of 30 are the development split
    info = json.loads((path / "kiwi_model.json").read_text())
    assert info["metrics"]["dev_notes"] == 5 and "f1" in info["metrics"]["dev"]["ner"]["exact"]
    # the retraining loop reads the cached copy, without the network
    again = default_corpora(settings.model_copy(update={"corpus_api": "http://127.0.0.1:9"}))
    assert len(again.seed) == 25 and len(again.dev) == 5 and "fetched before" in again.source


def test_bootstrap_offline_says_so_and_trains_on_the_synthetic_corpus(tmp_path: Path, monkeypatch) -> None:
    settings = _first_run_settings(tmp_path, "http://127.0.0.1:9/repos/x/kiwi", monkeypatch)
    lines: list[str] = []
    path = bootstrap(settings, ModelVersions(settings.model_dir), say=lines.append)
    (offline,) = [line for line in lines if line.startswith("No public corpus")]
    assert "KIWI_SEED_CORPUS" in offline and "synthetic" in offline
    info = json.loads((path / "kiwi_model.json").read_text())
    n = corpora.SYNTHETIC_NOTES + 4
    assert info["metrics"]["dev_notes"] == round(n / 6) and "synthetic" in info["metrics"]["seed"]


def test_a_tiny_seed_is_not_measured(tmp_path: Path, monkeypatch, sample_dir: Path) -> None:
    settings = _first_run_settings(tmp_path, "http://127.0.0.1:9", monkeypatch)
    settings = settings.model_copy(update={"seed_corpus": sample_dir})
    lines: list[str] = []
    path = bootstrap(settings, ModelVersions(settings.model_dir), say=lines.append)
    assert any("too few for a development split" in line for line in lines)
    assert any("not measured" in line for line in lines)
    assert not json.loads((path / "kiwi_model.json").read_text())["metrics"].get("dev")


# --- progress lines ------------------------------------------------------------------------------
def test_progress_lines_every_30_seconds_with_rate_and_eta() -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    lines: list[str] = []
    for _ in reporting(range(10), "epoch 1/3", 10, lines.append, clock=clock):
        now[0] += 7.0  # 7 s a step: a line after steps 5 and 10 (35 s, 70 s), then the summary
    assert len(lines) == 3
    assert lines[0] == "epoch 1/3: 5/10 (50%), 7.0 s/step, ETA 35s (all 3 epochs: at most 2m55s)"
    assert lines[-1] == "epoch 1/3: 10 steps in 1m10s"
    # a run resumed inside its epoch: the later epochs take the whole epoch's steps, not what was left
    lines.clear()
    for _ in reporting(range(10), "epoch 1/3, resumed at step 90 of 100", 10, lines.append, clock=clock):
        now[0] += 7.0
    assert lines[0].endswith("ETA 35s (all 3 epochs: at most 23m55s)")  # 35 s + 2 x 100 x 7 s
