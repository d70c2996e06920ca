"""Predictions of slow models (a LLaMA), computed ahead of the annotator: a durable queue and cache.

One row per (model version, kind, input hash): ``text`` predictions from a note's text alone (its
hash is the text's), ``given`` ones with the note's main entities given (the hash covers them too).
A row is queued, then running, then done with the predicted document, or failed after the allowed
attempts. A prediction is found only under the exact version and hash it was made for, so a new
model version or an edited note never gets another's prediction; rows survive restarts, so does
the queue.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from recommender.document import Document
from recommender.formats.jsonl import from_dict, to_dict
from recommender.store.corrections import content_hash
from recommender.store.database import outage_is_unavailable
from recommender.store.tables import predictions

Kind = Literal["text", "given"]
STATES = ("queued", "running", "done", "failed")


def input_hash(doc: Document, kind: Kind) -> str:
    """What a prediction depends on: the text, and for ``given`` also the given annotations."""
    if kind == "text":
        return hashlib.sha256(doc.text.encode("utf-8", "surrogatepass")).hexdigest()
    return content_hash(doc)


def model_input(doc: Document, kind: Kind) -> Document:
    """The document a prediction of ``kind`` is computed from: only the text for ``text`` (the model
    segments it itself, so the same text gives the same prediction from every tool)."""
    if kind == "text":
        return Document(id=doc.id, text=doc.text)
    return doc


@dataclass(frozen=True)
class Entry:
    """A cache row as a predict request sees it."""

    state: str
    attempts: int
    document: Document | None  # when done
    error: str | None  # when failed


@dataclass(frozen=True)
class Claimed:
    """A queued prediction a worker took: compute it, then ``finish`` or ``fail`` it."""

    id: int
    kind: Kind
    document: Document
    attempts: int


class PredictionCache:
    """The ``predictions`` table of the service's database (``engine`` of the CorrectionStore)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @outage_is_unavailable
    def lookup(self, version: str, kind: Kind, hashes: Iterable[str]) -> dict[str, Entry]:
        """The rows of ``version`` among ``hashes``, by hash (absent: never queued)."""
        wanted = sorted(set(hashes))
        if not wanted:
            return {}
        query = sa.select(
            predictions.c.input_hash,
            predictions.c.state,
            predictions.c.attempts,
            predictions.c.document,
            predictions.c.error,
        ).where(
            predictions.c.model_version == version,
            predictions.c.kind == kind,
            predictions.c.input_hash.in_(wanted),
        )
        out = {}
        with self.engine.connect() as conn:
            for digest, state, attempts, document, error in conn.execute(query):
                doc = from_dict(json.loads(document), source="prediction cache") if document else None
                out[digest] = Entry(state, attempts, doc, error)
        return out

    @outage_is_unavailable
    def enqueue(self, model: str, version: str, kind: Kind, docs: Iterable[Document]) -> int:
        """Queue the documents not queued or cached for ``version`` yet; returns how many were new."""
        by_hash = {input_hash(d, kind): model_input(d, kind) for d in docs}
        if not by_hash:
            return 0
        now = datetime.now(UTC)
        new = 0
        for _ in range(3):  # another writer may queue the same note between the select and the insert
            present = set(self.lookup(version, kind, by_hash))
            rows = [
                {
                    "model": model,
                    "model_version": version,
                    "kind": kind,
                    "input_hash": digest,
                    "state": "queued",
                    "attempts": 0,
                    "created": now,
                    "updated": now,
                    "input": json.dumps(to_dict(doc), ensure_ascii=False),
                }
                for digest, doc in by_hash.items()
                if digest not in present
            ]
            if not rows:
                return new
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.insert(predictions), rows)
                return new + len(rows)
            except IntegrityError:
                continue
        return new

    @outage_is_unavailable
    def put(self, model: str, version: str, kind: Kind, doc: Document, predicted: Document) -> None:
        """Store a prediction computed elsewhere (``kiwi precompute``), replacing a queued or failed row."""
        with self.engine.begin() as conn:
            self._put(conn, model, version, kind, doc, predicted)

    @outage_is_unavailable
    def put_many(
        self, model: str, version: str, kind: Kind, pairs: Sequence[tuple[Document, Document]]
    ) -> None:
        """``put`` of many (document, prediction) pairs in one transaction: a corpus run stores a batch
        at a time, since a durable commit per note limits it to tens of notes a second on SQLite."""
        with self.engine.begin() as conn:
            for doc, predicted in pairs:
                self._put(conn, model, version, kind, doc, predicted)

    def _put(
        self, conn: Connection, model: str, version: str, kind: Kind, doc: Document, predicted: Document
    ) -> None:
        digest = input_hash(doc, kind)
        now = datetime.now(UTC)
        values = {
            "state": "done",
            "updated": now,
            "document": json.dumps(to_dict(predicted), ensure_ascii=False),
            "error": None,
        }
        key = (
            (predictions.c.model_version == version)
            & (predictions.c.kind == kind)
            & (predictions.c.input_hash == digest)
        )
        if conn.execute(sa.update(predictions).where(key).values(**values)).rowcount:
            return
        conn.execute(
            sa.insert(predictions).values(
                model=model,
                model_version=version,
                kind=kind,
                input_hash=digest,
                attempts=1,
                created=now,
                input=json.dumps(to_dict(model_input(doc, kind)), ensure_ascii=False),
                **values,
            )
        )

    @outage_is_unavailable
    def claim(self, model: str, version: str, limit: int = 1) -> list[Claimed]:
        """Take up to ``limit`` queued predictions of ``version``, oldest first, marking them running.
        Two workers (replicas) never take the same row: the update counts only while it is queued."""
        queued = (
            (predictions.c.model == model)
            & (predictions.c.model_version == version)
            & (predictions.c.state == "queued")
        )
        out = []
        with self.engine.connect() as conn:
            ids = list(
                conn.execute(
                    sa.select(predictions.c.id).where(queued).order_by(predictions.c.id).limit(limit * 4)
                ).scalars()
            )
        for row_id in ids:
            if len(out) == limit:
                break
            with self.engine.begin() as conn:
                taken = conn.execute(
                    sa.update(predictions)
                    .where(predictions.c.id == row_id, predictions.c.state == "queued")
                    .values(state="running", attempts=predictions.c.attempts + 1, updated=datetime.now(UTC))
                ).rowcount
                if not taken:
                    continue
                kind, document, attempts = conn.execute(
                    sa.select(predictions.c.kind, predictions.c.input, predictions.c.attempts).where(
                        predictions.c.id == row_id
                    )
                ).one()
            doc = from_dict(json.loads(document), source=f"prediction {row_id}")
            out.append(Claimed(row_id, kind, doc, attempts))
        return out

    @outage_is_unavailable
    def finish(self, row_id: int, predicted: Document) -> None:
        self._set(
            row_id, state="done", document=json.dumps(to_dict(predicted), ensure_ascii=False), error=None
        )

    @outage_is_unavailable
    def fail(self, row_id: int, error: str, max_attempts: int) -> str:
        """Count a failed attempt: queued again while attempts remain, else failed; returns the state."""
        with self.engine.connect() as conn:
            attempts = conn.execute(
                sa.select(predictions.c.attempts).where(predictions.c.id == row_id)
            ).scalar_one()
        state = "queued" if attempts < max_attempts else "failed"
        self._set(row_id, state=state, error=error[:500])
        return state

    @outage_is_unavailable
    def requeue_stalled(self, older_than_seconds: float, max_attempts: int) -> int:
        """Running rows not finished within ``older_than_seconds`` (a worker that died or hung) count as
        a failed attempt; returns how many."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        stalled = (predictions.c.state == "running") & (predictions.c.updated < cutoff)
        with self.engine.begin() as conn:
            ids = list(conn.execute(sa.select(predictions.c.id).where(stalled)).scalars())
        for row_id in ids:
            self.fail(row_id, f"no answer within {older_than_seconds:.0f} s", max_attempts)
        return len(ids)

    @outage_is_unavailable
    def heartbeat(self, row_id: int) -> None:
        """The worker of a running row is alive (paused for requests), so the row is not stalled."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(predictions)
                .where(predictions.c.id == row_id, predictions.c.state == "running")
                .values(updated=datetime.now(UTC))
            )

    @outage_is_unavailable
    def carry_over(self, model: str, version: str) -> int:
        """Queue for ``version`` the inputs that ``model``'s other versions had (a retrained adapter
        computes ahead what its predecessor had computed); returns how many were new."""
        query = (
            sa.select(predictions.c.kind, predictions.c.input)
            .where(predictions.c.model == model, predictions.c.model_version != version)
            .order_by(predictions.c.id)
        )
        with self.engine.connect() as conn:
            rows = list(conn.execute(query))
        new = 0
        for kind in ("text", "given"):
            docs = [from_dict(json.loads(i), source="prediction cache") for k, i in rows if k == kind]
            new += self.enqueue(model, version, kind, docs)
        return new

    @outage_is_unavailable
    def counts(self, model: str, version: str) -> dict[str, int]:
        """Rows of ``model`` at ``version`` by state (every state, zeros included)."""
        query = (
            sa.select(predictions.c.state, sa.func.count())
            .where(predictions.c.model == model, predictions.c.model_version == version)
            .group_by(predictions.c.state)
        )
        with self.engine.connect() as conn:
            found = dict(conn.execute(query).tuples().all())
        return {state: int(found.get(state, 0)) for state in STATES}

    def _set(self, row_id: int, **values: object) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(predictions)
                .where(predictions.c.id == row_id)
                .values(updated=datetime.now(UTC), **values)
            )


__all__ = ["STATES", "Claimed", "Entry", "Kind", "PredictionCache", "input_hash", "model_input"]
