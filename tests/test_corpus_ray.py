"""Corpus runs on Ray Data (``kiwi predict --ray``): the same answers as one process, bad notes reported
by id, resumable through the prediction cache, exactly once on a two-node cluster whose worker
process is killed mid-run, and a real Label Studio project as input and output."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("torch")

from lsserver import LS_TOKEN
from raycluster import LoopbackCluster
from support import require_module, tiny_bert

from recommender.batch.notes import read_corpus
from recommender.document import Document
from recommender.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
N_NOTES = 200
N_TASKS = 20
ACTOR = "MapWorker"  # Ray Data's title of an actor pool's worker processes


@pytest.fixture(scope="module", autouse=True)
def ray_data() -> None:
    """Ray Data and pyarrow (the ray extra): a skip with the reason without them, a failure in CI."""
    require_module("ray.data", "Ray Data", "install kiwi-recommender[ray] (make setup does)")


def _kiwi(*args: str, env: dict[str, str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from recommender.cli import main; main()", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[call-overload]
    )


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "KIWI_DATABASE_URL": f"sqlite:///{tmp}/cache.sqlite3",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _done(proc: subprocess.Popen[str], timeout: float = 600) -> str:
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the run shuts its embedded Ray down
        try:
            _out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
        pytest.fail(f"kiwi did not finish in {timeout:.0f} s: {err[-2000:]}")
    assert proc.returncode == 0, err[-3000:]
    return err


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny encoder trained for one epoch on six generated notes: what it predicts does not matter,
    only that every run predicts the same."""
    import torch

    from recommender.extractors.encoder import EncoderConfig, train_encoder

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ray_model")
    docs = generate(8, seed=3)
    config = EncoderConfig(
        base_model=str(tiny_bert(root / "bert")), max_length=64, window_overlap=16, epochs=1, batch_size=4
    )
    train_encoder(docs[:6], docs[6:], config, root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def notes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("notes")
    for doc in generate(N_NOTES, seed=5):
        (folder / f"{doc.id}.txt").write_text(doc.text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def single(model: Path, notes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, ``kiwi predict`` as before."""
    tmp = tmp_path_factory.mktemp("single")
    _done(
        _kiwi("predict", "--model", str(model), str(notes), str(tmp / "out"), "--threads", "1", env=_env(tmp))
    )
    return tmp / "out"


def _same(out: Path, reference: Path, ids: list[str]) -> None:
    for note_id in ids:
        for suffix in (".txt", ".ann"):
            got = (out / f"{note_id}{suffix}").read_text(encoding="utf-8")
            assert got == (reference / f"{note_id}{suffix}").read_text(encoding="utf-8"), note_id


def _cache_rows(tmp: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(tmp / "cache.sqlite3") as db:
        return list(db.execute("SELECT model_version, input_hash, state FROM predictions"))


def test_local_ray_gives_the_single_process_answers_reports_bad_notes_and_resumes(
    model: Path, notes: Path, single: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    ids = sorted(p.stem for p in notes.glob("*.txt"))
    for note_id in ids:
        (corpus / f"{note_id}.txt").write_bytes((notes / f"{note_id}.txt").read_bytes())
    (corpus / "copy_of_first.txt").write_bytes((notes / f"{ids[0]}.txt").read_bytes())  # same text
    (corpus / "blank.txt").write_text(" \n\n", encoding="utf-8")
    (corpus / "latin1.txt").write_bytes("Pt denies fever. Caf\xe9 au lait spots.".encode("latin-1"))
    (corpus / "too_long.txt").write_text("Chest pain. " * 600, encoding="utf-8")  # 7,200 characters
    env = _env(tmp_path, KIWI_MAX_NOTE_CHARS="5000")

    err = _done(_kiwi("predict", "--model", str(model), str(corpus), str(tmp_path / "out"), "--ray", env=env))
    _same(tmp_path / "out", single, ids)
    copy = (tmp_path / "out" / "copy_of_first.ann").read_text(encoding="utf-8")
    assert copy == (single / f"{ids[0]}.ann").read_text(encoding="utf-8")
    assert f"{N_NOTES + 1} notes ({N_NOTES} distinct texts)" in err and f": {N_NOTES} predicted on Ray" in err
    assert "3 note(s) not predicted: blank (empty), latin1 (undecodable (not UTF-8)), too_long (over" in err
    assert not (tmp_path / "out" / "blank.ann").exists()
    texts = [(notes / f"{i}.txt").read_text(encoding="utf-8") for i in ids]
    assert not any(line in err for text in texts for line in text.splitlines() if len(line) > 20)
    rows = _cache_rows(tmp_path)
    assert len(rows) == N_NOTES and {r[2] for r in rows} == {"done"}

    # Run again: every note from the cache (Ray is not even started), the same output; Parquet too.
    err = _done(
        _kiwi("predict", "--model", str(model), str(corpus), str(tmp_path / "again.parquet"), "--ray",
              "--to", "parquet", env=env)
    )  # fmt: skip
    assert f": 0 predicted on Ray by 0 actor(s), {N_NOTES} from the cache" in err
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "again.parquet").to_pylist()
    assert sorted(r["id"] for r in table) == sorted([*ids, "copy_of_first"])
    first = next(r for r in table if r["id"] == ids[0])
    assert json.loads(first["document"])["spans"] and first["model_version"] == rows[0][0]
    assert len(_cache_rows(tmp_path)) == N_NOTES


def test_a_two_node_cluster_survives_a_killed_worker_with_every_note_once(
    model: Path, notes: Path, single: Path, tmp_path: Path
) -> None:
    cluster = LoopbackCluster(cpus=(1, 1), pythonpath=REPO)
    run = None
    try:
        cluster.start()
        env = _env(tmp_path, **{k: v for k, v in cluster.env.items() if k.startswith("RAY_")})
        run = _kiwi(
            "predict", "--model", str(model), str(notes), str(tmp_path / "out"),
            "--ray-address", cluster.address, "--ray-actors", "2", "--batch-size", "4", env=env,
        )  # fmt: skip
        killed, done_at_kill = None, 0
        deadline = time.monotonic() + 600
        while killed is None and run.poll() is None and time.monotonic() < deadline:
            try:  # (connecting first would create the file the driver is about to make)
                db = (tmp_path / "cache.sqlite3").exists()
                done_at_kill = len(_cache_rows(tmp_path)) if db else 0
            except sqlite3.OperationalError:  # the driver has not made its tables yet
                done_at_kill = 0
            victims = cluster.workers(1, ACTOR)  # an actor on the worker node
            if done_at_kill >= 8 and victims:
                killed = victims[0].pid
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        err = _done(run)
        assert killed is not None, f"no actor process on the worker node to kill: {err[-2000:]}"
        assert done_at_kill < N_NOTES, "the run ended before the kill"
    finally:
        if run is not None and run.poll() is None:  # a failed check: the driver goes too
            run.kill()
            run.wait(30)
        cluster.stop()
    assert cluster.alive() == []

    ids = sorted(p.stem for p in notes.glob("*.txt"))
    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert out == sorted(f"{i}{s}" for i in ids for s in (".ann", ".txt"))  # every note once
    _same(tmp_path / "out", single, ids)
    rows = _cache_rows(tmp_path)
    assert len(rows) == len({r[1] for r in rows}) == N_NOTES and {r[2] for r in rows} == {"done"}
    assert f": {N_NOTES} predicted on Ray by 2 actor(s), 0 from the cache" in err


def test_a_corpus_is_read_leniently(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = [
        json.dumps({"id": "a", "text": "Chest pain."}),
        "{not json",
        json.dumps({"id": "b", "text": ""}),
        json.dumps({"id": "a", "text": "Again."}),
        json.dumps(["no", "object"]),
        json.dumps({"id": "c", "text": "Fever 😀."}),
    ]
    (tmp_path / "notes.jsonl").write_bytes("\n".join(lines).encode() + b"\n\xff\xfe\n")
    corpus = read_corpus(tmp_path / "notes.jsonl", None, 100)
    assert [(n.id, n.text) for n in corpus.notes] == [("a", "Chest pain."), ("c", "Fever 😀.")]
    assert corpus.bad == {
        "a": "duplicate id: only the first note of that id is predicted",
        "line 2": "malformed JSON (Expecting property name enclosed in double quotes)",
        "b": "empty",
        "line 5": "not a JSON object",
        "line 7": "undecodable (not UTF-8)",
    }
    pq.write_table(pa.table({"id": [1, 2], "text": ["Cough.", None]}), tmp_path / "notes.parquet")
    corpus = read_corpus(tmp_path / "notes.parquet", None, 100)
    assert [(n.id, n.text) for n in corpus.notes] == [("1", "Cough.")] and corpus.bad == {"2": "no text"}


class _Servers:
    """OpenAI-compatible stand-ins on loopback: each answers like ``test_llama_engines.Tagger`` (tags
    every "aspirin" as a drug) and records how many requests it had in flight at most."""

    def __init__(self, n: int, delay: float = 0.05) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from test_llama_engines import Tagger

        self.taggers = [Tagger() for _ in range(n)]
        self.in_flight, self.most = [0] * n, [0] * n
        lock = threading.Lock()
        servers = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                k = servers.httpds.index(self.server)
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with lock:
                    servers.in_flight[k] += 1
                    servers.most[k] = max(servers.most[k], servers.in_flight[k])
                time.sleep(delay)
                with lock:
                    status, payload = servers.taggers[k].next(body)
                    servers.in_flight[k] -= 1
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpds = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(n)]
        for httpd in self.httpds:
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
        self.urls = [f"http://127.0.0.1:{h.server_address[1]}" for h in self.httpds]

    def close(self) -> None:
        for httpd in self.httpds:
            httpd.shutdown()
            httpd.server_close()


def test_a_llama_goes_through_its_servers_with_bounded_concurrency_each(tmp_path: Path) -> None:
    import transformers
    from test_llama_engines import build_tiny_llama

    from recommender.batch.notes import Corpus, Note
    from recommender.batch.ray_runner import RayOptions, run_corpus
    from recommender.corpora import load_sample
    from recommender.extractors.base import ModelInfo
    from recommender.extractors.llama.config import LlamaConfig
    from recommender.extractors.llama.extractor import MERGED_DIR, NAME, LlamaExtractor
    from recommender.extractors.llama.task import Templates
    from recommender.store import CorrectionStore
    from recommender.store.predictions import PredictionCache

    tiny = build_tiny_llama(tmp_path / "tiny", load_sample()[:2])
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny)
    folder = tmp_path / "llama"
    config = LlamaConfig(engine="openai", engine_url="http://127.0.0.1:9", engine_concurrency=2)
    LlamaExtractor(model, tokenizer, config, Templates.packaged(), ModelInfo(NAME, "llama-ray"), None).save(
        folder
    )
    model.save_pretrained(folder / MERGED_DIR)
    tokenizer.save_pretrained(folder / MERGED_DIR)

    texts = [f"Patient {k} takes aspirin daily. No fever. Chest pain for {k} days." for k in range(12)]
    corpus = Corpus([Note(f"n{k}", t) for k, t in enumerate(texts)])
    servers = _Servers(2)
    store = CorrectionStore(f"sqlite:///{tmp_path}/cache.sqlite3")
    try:
        options = RayOptions(engine_urls=tuple(servers.urls), actor_cpus=0.5, batch_size=3)
        docs, summary = run_corpus(folder, corpus, PredictionCache(store.engine), "llama", options)
    finally:
        store.close()
        servers.close()
    assert summary.actors == 2 and summary.computed == 12 and not summary.failed
    assert all(tagger.bodies for tagger in servers.taggers), "every server had a share"
    assert servers.most == [2, 2]  # engine_concurrency (2) at once per server, never more
    assert [d.id for d in docs] == [n.id for n in corpus.notes]
    for doc in docs:
        drugs = [doc.text[s.begin : s.end] for s in doc.spans if s.label == "drug"]
        assert drugs == ["aspirin"] and doc.spans[0].source == "llama-ray"


def _ls_predictions(ls: httpx.Client, project: int) -> list[dict[str, Any]]:
    r = ls.get("/api/predictions/", params={"project": project})
    r.raise_for_status()
    return r.json()


@pytest.mark.external
def test_a_label_studio_project_in_and_back_once_per_task_and_version(
    model: Path, label_studio: httpx.Client, tmp_path: Path
) -> None:
    """``kiwi predict --ray --label-studio``: the project's tasks predicted on a local Ray and pushed back
    as predictions of the model's version, the single-process spans, one per task; tasks a stopped run
    had pushed already are skipped, and a second run pushes nothing."""
    from recommender.extractors import load_extractor
    from recommender.extractors.base import ModelInfo
    from recommender.formats.labelstudio import document_prediction, labeling_config
    from recommender.guidelines import labelstudio_config

    ls = label_studio
    version = ModelInfo.load(model).version
    docs = generate(N_TASKS, seed=11)
    project = ls.post("/api/projects/", json={"title": "kiwi ray", "label_config": labelstudio_config()})
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    rows = [{"text": d.text} for d in docs] + [{"text": "  \n"}, {"text": "to lose its key"}]
    assert ls.post(f"/api/projects/{pid}/import", json=rows).status_code == 201
    listed = ls.get("/api/tasks/", params={"project": pid, "page_size": 100}).json()
    ids = sorted(t["id"] for t in (listed["tasks"] if isinstance(listed, dict) else listed))
    assert len(ids) == N_TASKS + 2
    empty, keyless = ids[-2:]
    assert ls.patch(f"/api/tasks/{keyless}", json={"data": {"note": "elsewhere"}}).status_code == 200

    # The reference: one process. Two tasks got theirs from a run that stopped before the others; one
    # carries another version's prediction, which does not count.
    extractor = load_extractor(model)
    config = labeling_config(labelstudio_config())
    single = {
        task_id: document_prediction(config.restrict(doc), config, version)
        for task_id, doc in zip(
            ids[:N_TASKS], extractor.predict([Document(id="x", text=d.text) for d in docs]), strict=True
        )
    }
    assert sum(bool(p["result"]) for p in single.values()) >= N_TASKS // 2, "the tiny model finds spans"
    for task_id in ids[:2]:
        assert ls.post("/api/predictions/", json={"task": task_id, **single[task_id]}).status_code == 201
    other = {"task": ids[2], "model_version": "older", "score": 0.5, "result": []}
    assert ls.post("/api/predictions/", json=other).status_code == 201

    env = _env(tmp_path, KIWI_LABEL_STUDIO_URL=str(ls.base_url), KIWI_LABEL_STUDIO_TOKEN=LS_TOKEN)
    args = ["predict", "--model", str(model), "--ray", "--ray-actors", "1", "--label-studio", str(pid)]
    err = _done(_kiwi(*args, env=env))
    assert f"{N_TASKS + 2} task(s), 2 already with a prediction of {version}, {N_TASKS - 2} to predict" in err
    assert f"{N_TASKS - 2} notes ({N_TASKS - 2} distinct texts) by {version}: {N_TASKS - 2} predicted" in err
    assert f"2 note(s) not predicted: {empty} (empty), {keyless} (no text in data[text])" in err
    assert f"{N_TASKS - 2} prediction(s) of {version} pushed to Label Studio project {pid}" in err
    assert not any(line in err for d in docs for line in d.text.splitlines() if len(line) > 20)

    def ours() -> dict[int, list[dict[str, Any]]]:
        found: dict[int, list[dict[str, Any]]] = {}
        for p in _ls_predictions(ls, pid):
            if p["model_version"] == version:
                found.setdefault(p["task"], []).append(p)
        return found

    got = ours()
    assert sorted(got) == ids[:N_TASKS]  # every task with a text, none of the bad ones
    for task_id, [prediction] in got.items():  # exactly one each
        assert prediction["result"] == single[task_id]["result"], task_id
        assert prediction["score"] == pytest.approx(single[task_id]["score"])
    assert sum(p["model_version"] == "older" for p in _ls_predictions(ls, pid)) == 1

    # Again: nothing left to predict or push; the bad tasks are reported again, nothing doubled.
    err = _done(_kiwi(*args, env=env))
    assert f"{N_TASKS + 2} task(s), {N_TASKS} already with a prediction of {version}, 0 to predict" in err
    assert f"0 prediction(s) of {version} pushed" in err
    assert f"2 note(s) not predicted: {empty} (empty), {keyless} (no text in data[text])" in err
    assert {k: len(v) for k, v in ours().items()} == dict.fromkeys(ids[:N_TASKS], 1)

    # A request Label Studio refuses as invalid stores none of it: its predictions go one by one, so
    # only the bad one (a task of no project) is reported; requests of 2, two at once.
    from recommender.batch.labelstudio_project import Project, push_predictions
    from recommender.batch.notes import Corpus
    from recommender.service.labelstudio_client import LabelStudioClient

    client = LabelStudioClient(str(ls.base_url), LS_TOKEN)
    sent = [Document(id=str(i), text=docs[k].text) for k, i in enumerate(ids[:3])]
    sent.insert(1, Document(id="999999", text="A task of no project."))
    try:
        pushed = push_predictions(client, Project(pid, "by hand", config, Corpus(), 0, 0), sent, 2, chunk=2)
    finally:
        client.close()
    assert [d.id for d in pushed.shown] == [str(i) for i in ids[:3]] and list(pushed.failed) == ["999999"]
    by_hand = sorted(p["task"] for p in _ls_predictions(ls, pid) if p["model_version"] == "by hand")
    assert by_hand == ids[:3]
