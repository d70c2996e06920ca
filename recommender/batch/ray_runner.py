"""A corpus through Ray Data: the model in an actor pool, the prediction cache kept exact by the driver.

The driver reads the corpus, looks every distinct text up in the prediction cache (model version +
text hash) and sends only the texts not done yet to Ray, so a run stopped by a crash or Ctrl-C goes
on where it was. Each actor of the pool loads the model once and predicts batches with as many torch
threads as it has CPUs; a LLaMA's actors each take one OpenAI-compatible server (vLLM) of the list,
so a server sees at most ``engine_concurrency`` requests at once. A worker process that dies is
restarted by Ray and its batch is run again; the driver stores each result in the cache as it
arrives, keyed, so a text is stored and output once however often Ray delivers it.

Needs ``kiwi-recommender[ray]``; imported only by ``--ray`` runs.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from recommender.batch.notes import Corpus, Note
from recommender.document import Document
from recommender.errors import ConfigError
from recommender.extractors.base import ModelInfo
from recommender.formats.jsonl import from_dict, to_dict
from recommender.progress import reporting
from recommender.store.predictions import PredictionCache, input_hash

log = logging.getLogger(__name__)

LOOKUP_CHUNK = 500  # hashes per cache query
LLAMA = "kiwi.llama.v1"


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # an existing cluster (HEAD:PORT, "auto"); None: an embedded local Ray
    actors: int | None = None  # default: the cluster's CPUs / actor_cpus (one per server for a LLaMA)
    actor_cpus: float = 1.0  # CPUs reserved per actor; its torch threads
    batch_size: int = 16  # notes per model call
    engine_urls: tuple[str, ...] = ()  # a LLaMA's OpenAI-compatible servers, one actor each
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # Settings.extractor_overrides()


@dataclass
class WorkerStat:
    notes: int = 0
    peak_rss_mb: float = 0.0


@dataclass
class RunSummary:
    """What a run did; ``lines`` says it without any note text."""

    version: str
    notes: int  # readable notes
    texts: int  # distinct texts among them (a text is predicted once)
    cached: int = 0  # texts found in the cache for this version before the run
    computed: int = 0  # texts predicted by this run
    repeated: int = 0  # results Ray delivered again after a retry (stored once, counted here)
    failed: dict[str, str] = field(default_factory=dict)  # note id -> why the model call failed
    bad: dict[str, str] = field(default_factory=dict)  # note id -> why it was not predicted
    actors: int = 0
    workers: dict[str, WorkerStat] = field(default_factory=dict)
    startup_seconds: float = 0.0  # connecting to (or starting) Ray
    first_result_seconds: float = 0.0  # from then to the first prediction (the actors load the model)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        rate = self.computed / self.seconds if self.seconds else 0.0
        out = [
            f"{self.notes} notes ({self.texts} distinct texts) by {self.version}: {self.computed} predicted "
            f"on Ray by {self.actors} actor(s), {self.cached} from the cache; Ray start-up "
            f"{self.startup_seconds:.1f} s, {self.seconds:.1f} s in all ({rate:.2f} notes/s)"
        ]
        if self.workers:
            out.append(
                "per worker: "
                + ", ".join(
                    f"{w} {s.notes} notes (peak {s.peak_rss_mb:.0f} MB)"
                    for w, s in sorted(self.workers.items())
                )
            )
        if self.repeated:
            out.append(f"{self.repeated} result(s) delivered again after a retry, stored once")
        for what, notes in (("not predicted", self.bad), ("failed", self.failed)):
            if notes:
                listed = ", ".join(f"{i} ({why})" for i, why in sorted(notes.items()))
                out.append(f"{len(notes)} note(s) {what}: {listed}")
        return out


def run_corpus(
    model: Path,
    corpus: Corpus,
    cache: PredictionCache,
    name: str,
    options: RayOptions,
    *,
    interactive: bool | None = None,
) -> tuple[list[Document], RunSummary]:
    """Predict every note of ``corpus`` with the model folder ``model`` (the same path on every node),
    through the cache. Returns the predicted documents in corpus order (bad and failed notes left out)
    and the summary. ``interactive``: Ray's progress bars (default: stderr is a terminal); otherwise a
    progress line every 30 seconds."""
    start = time.monotonic()
    version = ModelInfo.load(model).version
    hashes = {n.id: _text_hash(n) for n in corpus.notes}
    first: dict[str, Note] = {}
    for note in corpus.notes:
        first.setdefault(hashes[note.id], note)
    summary = RunSummary(version, len(corpus.notes), len(first), bad=dict(corpus.bad))
    done = _cached(cache, version, list(first))
    summary.cached = len(done)
    todo = [note for digest, note in first.items() if digest not in done]
    if todo:
        _on_ray(Path(model), todo, cache, name, version, options, summary, done, interactive)
    docs = []
    for note in corpus.notes:
        predicted = done.get(hashes[note.id])
        if predicted is None:
            continue  # failed: reported in the summary
        docs.append(replace(predicted, id=note.id))
    summary.seconds = time.monotonic() - start
    return docs, summary


def text_hashes(corpus: Corpus) -> dict[str, str]:
    """Note id -> the cache key of its text."""
    return {n.id: _text_hash(n) for n in corpus.notes}


def _text_hash(note: Note) -> str:
    return input_hash(Document(id=note.id, text=note.text), "text")


def _cached(cache: PredictionCache, version: str, digests: Sequence[str]) -> dict[str, Document]:
    done = {}
    for k in range(0, len(digests), LOOKUP_CHUNK):
        for digest, entry in cache.lookup(version, "text", digests[k : k + LOOKUP_CHUNK]).items():
            if entry.state == "done" and entry.document is not None:
                done[digest] = entry.document
    return done


def _on_ray(
    model: Path,
    todo: list[Note],
    cache: PredictionCache,
    name: str,
    version: str,
    options: RayOptions,
    summary: RunSummary,
    done: dict[str, Document],
    interactive: bool | None,
) -> None:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError("--ray needs Ray Data: install kiwi-recommender[ray]") from None
    if options.batch_size <= 0 or options.actor_cpus <= 0 or (options.actors or 1) <= 0:
        raise ConfigError(
            f"batch size, actors and CPUs per actor must be positive, got [{options.batch_size}], "
            f"[{options.actors}], [{options.actor_cpus}]"
        )
    llama = ModelInfo.load(model).extractor == LLAMA
    if options.engine_urls and not llama:
        raise ConfigError(f"engine URLs are for a LLaMA; [{model}] is a {ModelInfo.load(model).extractor}")
    interactive = sys.stderr.isatty() if interactive is None else interactive
    began = time.monotonic()
    ray.init(
        address=options.address,
        include_dashboard=False,
        log_to_driver=False,  # worker output stays in the nodes' Ray logs
        configure_logging=False,
    )
    try:
        summary.startup_seconds = time.monotonic() - began
        ray.data.DataContext.get_current().enable_progress_bars = interactive
        actors = options.actors or (
            len(options.engine_urls)
            if options.engine_urls
            else max(1, int(ray.cluster_resources().get("CPU", 1) // options.actor_cpus))
        )
        summary.actors = actors
        servers = None
        if options.engine_urls:
            servers = ray.remote(num_cpus=0)(_RoundRobin).remote(list(options.engine_urls))
        rows = [{"hash": _text_hash(n), "id": n.id, "text": n.text} for n in todo]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // options.batch_size)))
        ds = ds.map_batches(
            _Predictor,
            fn_constructor_kwargs={
                "model": str(model),
                "threads": max(1, int(options.actor_cpus)),
                "overrides": options.overrides,
                "servers": servers,
            },
            batch_size=options.batch_size,
            batch_format="numpy",
            # Ray Data's actors have max_restarts and max_task_retries -1: a killed worker process is
            # restarted and its batch run again
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=options.actor_cpus,
        )
        results = _rows(ds)
        if not interactive:
            results = reporting(results, "predicting on Ray", len(todo), log.info)
        ready = time.monotonic()
        pending: list[tuple[Document, Document]] = []
        for row in results:
            if not summary.first_result_seconds:
                summary.first_result_seconds = time.monotonic() - ready
            taken = _take(row, summary, done)
            if taken is not None:
                pending.append(taken)
            if len(pending) >= options.batch_size:
                _store(cache, name, version, pending, summary)
        _store(cache, name, version, pending, summary)
    finally:
        ray.shutdown()


def _rows(ds: Any) -> Iterator[dict[str, Any]]:
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for k in range(len(batch["hash"])):
            yield {key: batch[key][k] for key in batch}


def _take(
    row: dict[str, Any], summary: RunSummary, done: dict[str, Document]
) -> tuple[Document, Document] | None:
    """A result from Ray: (the note, its prediction) to store, or None (failed, or delivered before)."""
    digest, note_id = str(row["hash"]), str(row["id"])
    stat = summary.workers.setdefault(str(row["worker"]), WorkerStat())
    stat.notes += 1
    stat.peak_rss_mb = max(stat.peak_rss_mb, float(row["rss_mb"]))
    if digest in done:
        summary.repeated += 1
        return None
    if row["error"]:
        summary.failed[note_id] = str(row["error"])
        return None
    predicted = from_dict(json.loads(str(row["document"])), source="a Ray worker")
    summary.failed.pop(note_id, None)
    done[digest] = predicted
    return Document(id=note_id, text=predicted.text), predicted


def _store(
    cache: PredictionCache,
    name: str,
    version: str,
    pending: list[tuple[Document, Document]],
    summary: RunSummary,
) -> None:
    """One transaction per batch: a commit per note would cap a run at the disk's fsyncs per second."""
    if pending:
        cache.put_many(name, version, "text", pending)
        summary.computed += len(pending)
        pending.clear()


class _RoundRobin:
    """Hands each new LLaMA actor the next server URL (a Ray actor of its own)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls, self.given = urls, 0

    def next(self) -> str:
        url = self.urls[self.given % len(self.urls)]
        self.given += 1
        return url


class _Predictor:
    """One actor of the pool: the model loaded once, then batches of (hash, id, text) rows."""

    def __init__(
        self, model: str, threads: int, overrides: dict[str, dict[str, Any]], servers: Any = None
    ) -> None:
        from recommender.cores import apply_process_policy
        from recommender.extractors import load_extractor
        from recommender.settings import load_process_settings

        # before the model imports torch: OpenMP reads its environment once (recommender/cores.py)
        apply_process_policy(load_process_settings(threads=threads))
        self.threads = threads
        overrides = dict(overrides)
        if servers is not None:
            import ray

            url = ray.get(servers.next.remote())
            overrides[LLAMA] = {**overrides.get(LLAMA, {}), "engine": "openai", "engine_url": url}
        self.extractor = load_extractor(Path(model), overrides)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from recommender.cores import set_torch_threads

        set_torch_threads(self.threads)  # OpenMP keeps the count per thread; Ray may call from another
        docs = [Document(id=str(i), text=str(t)) for i, t in zip(batch["id"], batch["text"], strict=True)]
        out: list[str] = []
        errors: list[str] = []
        try:
            predicted: list[Document | None] = list(self.extractor.predict(docs))
            errors = [""] * len(docs)
        except Exception:  # one note can fail a batch: find it, keep the others
            predicted = []
            for doc in docs:
                try:
                    predicted.append(self.extractor.predict([doc])[0])
                    errors.append("")
                except Exception as e:  # the type only: a message may quote the note
                    predicted.append(None)
                    errors.append(f"model call failed: {type(e).__name__}")
        for doc in predicted:
            out.append(json.dumps(to_dict(doc), ensure_ascii=False) if doc is not None else "")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
        n = len(docs)
        return {
            "hash": list(batch["hash"]),
            "id": [d.id for d in docs],
            "document": out,
            "error": errors,
            "worker": [self.worker] * n,
            "rss_mb": [rss] * n,
        }


__all__ = ["RayOptions", "RunSummary", "WorkerStat", "run_corpus", "text_hashes"]
