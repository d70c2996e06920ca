"""The suggestion log: what each model version suggested for each note, and corrections scored against it.

A suggestion row keeps the model version that predicted, where the note lives (project and the tool's
document or task id), a hash of the note's text and the suggested spans and relations as offsets,
labels and scores. Never the text: the log holds no PHI the correction store does not already hold,
and a suggestion is matched to a correction only when project, document id and text hash agree, so an
edited note or another note never gets another's suggestion. Rows older than the retention are
deleted; the score rows (counts only) are kept for the figures over time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recommender.document import Document, Relation, Span
from recommender.errors import FormatError
from recommender.store.database import IMMEDIATE, outage_is_unavailable
from recommender.store.tables import suggestion_scores, suggestions


def text_hash(text: str) -> str:
    """The hash a suggestion is tied to its note's text by (the prediction cache's text hash)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def encode_annotations(doc: Document) -> str:
    """Offsets, labels and scores of ``doc``'s spans and relations (relations by span index), as JSON."""
    index = {s.id: n for n, s in enumerate(doc.spans)}
    spans = [[s.begin, s.end, s.label, s.score] for s in doc.spans]
    relations = [
        [index[r.head], index[r.tail], r.label, r.score]
        for r in doc.relations
        if r.head in index and r.tail in index
    ]
    return json.dumps({"spans": spans, "relations": relations}, separators=(",", ":"))


def decode_annotations(payload: str, source: str) -> Document:
    """The suggestion as a document without text (``text`` is empty: the caller has the note)."""
    try:
        data = json.loads(payload)
        doc = Document(id=source, text="")
        for n, (begin, end, label, score) in enumerate(data["spans"]):
            doc.spans.append(Span(f"T{n + 1}", label, int(begin), int(end), score))
        for n, (head, tail, label, score) in enumerate(data["relations"]):
            doc.relations.append(Relation(f"R{n + 1}", f"T{head + 1}", f"T{tail + 1}", label, score))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise FormatError("stored suggestion is not the log's JSON", source=source) from None
    return doc


@dataclass(frozen=True)
class NewSuggestion:
    """A suggestion to record: ``doc`` is the prediction as shown (its text is hashed, not kept)."""

    model: str
    model_version: str
    tool: str
    task: str  # all, entities, relations
    project: str
    document_id: str
    doc: Document
    fallback_for: str | None = None


@dataclass(frozen=True)
class Suggestion:
    id: int
    created: datetime
    model: str
    model_version: str
    fallback_for: str | None
    tool: str
    task: str
    project: str
    document_id: str
    text_hash: str
    document: Document  # without text


@dataclass(frozen=True)
class ScoreRow:
    id: int
    created: datetime
    correction_id: int
    suggestion_id: int
    model_version: str
    task: str
    project: str
    document_id: str
    annotator: str
    figures: dict[str, Any]


class SuggestionLog:
    """The ``suggestions`` and ``suggestion_scores`` tables of the service's database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @outage_is_unavailable
    def record(self, items: Sequence[NewSuggestion], now: datetime | None = None) -> int:
        """Append ``items`` in one transaction, leaving out a suggestion equal to the newest one of its
        note (INCEpTION asks again after every annotator action); returns how many were new."""
        now = now or datetime.now(UTC)
        rows = []
        for s in items:
            row = {
                "created": now,
                "model": s.model,
                "model_version": s.model_version,
                "fallback_for": s.fallback_for,
                "tool": s.tool,
                "task": s.task,
                "project": s.project,
                "document_id": s.document_id,
                "text_hash": text_hash(s.doc.text),
                "annotations": encode_annotations(s.doc),
            }
            if not self._repeated(row):
                rows.append(row)
        if rows:
            with self.engine.connect().execution_options(**{IMMEDIATE: True}) as conn, conn.begin():
                conn.execute(sa.insert(suggestions), rows)
        return len(rows)

    def _repeated(self, row: dict[str, Any]) -> bool:
        query = (
            sa.select(suggestions.c.model_version, suggestions.c.text_hash, suggestions.c.annotations)
            .where(
                suggestions.c.project == row["project"],
                suggestions.c.document_id == row["document_id"],
                suggestions.c.task == row["task"],
            )
            .order_by(suggestions.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            last = conn.execute(query).first()
        return last is not None and tuple(last) == (
            row["model_version"],
            row["text_hash"],
            row["annotations"],
        )

    @outage_is_unavailable
    def latest(self, project: str, document_id: str, digest: str) -> dict[str, Suggestion]:
        """The newest suggestion per task (all, entities, relations) for this note and text."""
        newest = (
            sa.select(sa.func.max(suggestions.c.id))
            .where(
                suggestions.c.project == project,
                suggestions.c.document_id == document_id,
                suggestions.c.text_hash == digest,
            )
            .group_by(suggestions.c.task)
        )
        query = sa.select(suggestions).where(suggestions.c.id.in_(newest.scalar_subquery()))
        with self.engine.connect() as conn:
            found = [_suggestion(dict(r._mapping)) for r in conn.execute(query)]
        return {s.task: s for s in found}

    @outage_is_unavailable
    def suggestions(self, project: str | None = None) -> list[Suggestion]:
        """Every logged suggestion (of ``project``), oldest first."""
        query = sa.select(suggestions).order_by(suggestions.c.id)
        if project is not None:
            query = query.where(suggestions.c.project == project)
        with self.engine.connect() as conn:
            return [_suggestion(dict(r._mapping)) for r in conn.execute(query)]

    @outage_is_unavailable
    def add_score(
        self,
        suggestion: Suggestion,
        correction_id: int,
        annotator: str,
        figures: dict[str, Any],
        now: datetime | None = None,
    ) -> int:
        row = {
            "created": now or datetime.now(UTC),
            "correction_id": correction_id,
            "suggestion_id": suggestion.id,
            "model_version": suggestion.model_version,
            "task": suggestion.task,
            "project": suggestion.project,
            "document_id": suggestion.document_id,
            "annotator": annotator,
            "figures": json.dumps(figures, separators=(",", ":")),
        }
        with self.engine.connect().execution_options(**{IMMEDIATE: True}) as conn, conn.begin():
            return int(conn.execute(sa.insert(suggestion_scores).values(**row)).inserted_primary_key[0])

    @outage_is_unavailable
    def scores(self, since: datetime | None = None, versions: Iterable[str] | None = None) -> list[ScoreRow]:
        """Score rows (created at or after ``since``; of ``versions``), oldest first."""
        query = sa.select(suggestion_scores).order_by(suggestion_scores.c.id)
        if since is not None:
            query = query.where(suggestion_scores.c.created >= since)
        if versions is not None:
            query = query.where(suggestion_scores.c.model_version.in_(sorted(set(versions))))
        with self.engine.connect() as conn:
            return [_score(dict(r._mapping)) for r in conn.execute(query)]

    @outage_is_unavailable
    def prune(self, retention_days: float, now: datetime | None = None) -> int:
        """Delete suggestions older than ``retention_days``; returns how many."""
        cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
        with self.engine.connect().execution_options(**{IMMEDIATE: True}) as conn, conn.begin():
            return int(conn.execute(sa.delete(suggestions).where(suggestions.c.created < cutoff)).rowcount)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite keeps no time zone


def _suggestion(row: dict[str, Any]) -> Suggestion:
    annotations = row.pop("annotations")
    return Suggestion(
        **{**row, "created": _utc(row["created"])},
        document=decode_annotations(annotations, f"suggestion {row['id']}"),
    )


def _score(row: dict[str, Any]) -> ScoreRow:
    try:
        figures = json.loads(row.pop("figures"))
    except json.JSONDecodeError:
        raise FormatError("stored score is not JSON", source=f"score {row['id']}") from None
    return ScoreRow(**{**row, "created": _utc(row["created"])}, figures=figures)


__all__ = [
    "NewSuggestion",
    "ScoreRow",
    "Suggestion",
    "SuggestionLog",
    "decode_annotations",
    "encode_annotations",
    "text_hash",
]
