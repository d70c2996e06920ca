"""The prediction cache and queue of slow models (``predictions`` table), on SQLite and PostgreSQL:
keyed by model version and input hash, bounded retries, stalled rows, durable across a reopen."""

from __future__ import annotations

import time

from recommender.document import Document
from recommender.store import CorrectionStore
from recommender.store.predictions import PredictionCache, input_hash

NOTE = Document("n1", "No fever. Aspirin 81 mg daily.")


def predicted(doc: Document) -> Document:
    out = Document(doc.id, doc.text)
    out.add_span("problem", 3, 8, score=0.9)
    out.uncertainty = 0.25
    return out


def test_queue_claim_finish_and_lookup_by_version_and_text(database_url: str) -> None:
    store = CorrectionStore(database_url)
    cache = PredictionCache(store.engine)
    assert cache.enqueue("llama", "v1", "text", [NOTE]) == 1
    assert cache.enqueue("llama", "v1", "text", [NOTE]) == 0, "queued once"
    assert cache.counts("llama", "v1") == {"queued": 1, "running": 0, "done": 0, "failed": 0}
    [claimed] = cache.claim("llama", "v1")
    assert claimed.document.text == NOTE.text and not claimed.document.spans and claimed.attempts == 1
    assert cache.claim("llama", "v1") == [], "a running row is not handed out twice"
    cache.finish(claimed.id, predicted(NOTE))
    [entry] = cache.lookup("v1", "text", [input_hash(NOTE, "text")]).values()
    assert entry.state == "done" and entry.document is not None
    assert [(s.label, s.begin, s.end) for s in entry.document.spans] == [("problem", 3, 8)]
    assert entry.document.uncertainty == 0.25
    # never served for another model version, another text or another kind of input
    assert cache.lookup("v2", "text", [input_hash(NOTE, "text")]) == {}
    edited = Document("n1", NOTE.text + " ")
    assert cache.lookup("v1", "text", [input_hash(edited, "text")]) == {}
    assert cache.lookup("v1", "given", [input_hash(NOTE, "given")]) == {}
    store.close()
    reopened = CorrectionStore(database_url)  # a restart: the rows are in the database
    again = PredictionCache(reopened.engine).lookup("v1", "text", [input_hash(NOTE, "text")])
    assert [e.state for e in again.values()] == ["done"]
    reopened.close()


def test_failures_are_retried_a_bounded_number_of_times(database_url: str) -> None:
    store = CorrectionStore(database_url)
    cache = PredictionCache(store.engine)
    cache.enqueue("llama", "v1", "text", [NOTE])
    states = []
    for _ in range(3):
        [claimed] = cache.claim("llama", "v1")
        states.append(cache.fail(claimed.id, "EngineError: server down", max_attempts=3))
    assert states == ["queued", "queued", "failed"]
    assert cache.claim("llama", "v1") == []
    [entry] = cache.lookup("v1", "text", [input_hash(NOTE, "text")]).values()
    assert entry.state == "failed" and entry.document is None and entry.attempts == 3
    assert entry.error == "EngineError: server down"
    store.close()


def test_a_stalled_prediction_counts_as_a_failed_attempt(database_url: str) -> None:
    store = CorrectionStore(database_url)
    cache = PredictionCache(store.engine)
    cache.enqueue("llama", "v1", "text", [NOTE])
    cache.claim("llama", "v1")
    assert cache.requeue_stalled(3600, max_attempts=2) == 0, "still within its time"
    time.sleep(0.05)
    assert cache.requeue_stalled(0.01, max_attempts=2) == 1
    assert cache.counts("llama", "v1")["queued"] == 1
    cache.claim("llama", "v1")
    time.sleep(0.05)
    cache.requeue_stalled(0.01, max_attempts=2)
    assert cache.counts("llama", "v1")["failed"] == 1
    store.close()


def test_a_heartbeat_keeps_a_paused_prediction_from_counting_as_stalled(database_url: str) -> None:
    store = CorrectionStore(database_url)
    cache = PredictionCache(store.engine)
    cache.enqueue("llama", "v1", "text", [NOTE])
    [claimed] = cache.claim("llama", "v1")
    time.sleep(0.3)
    cache.heartbeat(claimed.id)
    assert cache.requeue_stalled(0.2, max_attempts=2) == 0, "alive 0.3 s after its claim"
    time.sleep(0.3)
    assert cache.requeue_stalled(0.2, max_attempts=2) == 1, "no heartbeat since: stalled"
    store.close()


def test_a_new_version_queues_what_the_old_one_had(database_url: str) -> None:
    store = CorrectionStore(database_url)
    cache = PredictionCache(store.engine)
    other = Document("n2", "Denies chest pain.")
    cache.enqueue("llama", "v1", "text", [NOTE, other])
    cache.put("llama", "v1", "text", NOTE, predicted(NOTE))
    cache.enqueue("encoder-ish", "e1", "text", [Document("n3", "Unrelated.")])
    assert cache.carry_over("llama", "v2") == 2
    assert cache.carry_over("llama", "v2") == 0
    assert cache.counts("llama", "v2")["queued"] == 2
    assert cache.counts("llama", "v1") == {"queued": 1, "running": 0, "done": 1, "failed": 0}
    store.close()
