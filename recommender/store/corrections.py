"""Corrections per project, document, annotator and tool, kept as an append-only history.

Every change is a new row with the next revision number of its (project, document, annotator); the
row is committed before ``add`` returns, so an acknowledged correction survives a crash or ``kill -9``
(SQLite runs in WAL mode with ``synchronous=FULL``). A unique constraint on the revision makes two
writers racing on the same document (two replicas on PostgreSQL) retry instead of forking history.
An identical resend (INCEpTION resends every annotated document on each train call) is recognised
by a content hash of the text and annotations and not stored again. Deleting records a tombstone.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from recommender.document import Document
from recommender.errors import ConfigError, FormatError
from recommender.formats.jsonl import from_dict, to_dict
from recommender.store.database import IMMEDIATE, is_postgres, migrate, open_engine, outage_is_unavailable
from recommender.store.tables import corrections

log = logging.getLogger(__name__)

_RETRIES = 5


@dataclass(frozen=True)
class StoredCorrection:
    id: int
    project: str
    document_id: str
    annotator: str
    tool: str
    revision: int
    created: datetime
    content_hash: str
    deleted: bool
    document: Document | None


def content_hash(doc: Document) -> str:
    """A hash of what an annotator can change: the text and the annotations, not ids or scores."""
    index = doc.span_index()
    spans = sorted([s.label, s.begin, s.end] for s in doc.spans)
    rels = sorted(
        [r.label, *index[r.head].key, *index[r.tail].key]
        for r in doc.relations
        if r.head in index and r.tail in index
    )
    payload = json.dumps([doc.text, spans, rels], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class CorrectionStore:
    """``CorrectionStore("sqlite:///kiwi_models/corrections.sqlite3")`` or any SQLAlchemy URL."""

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.url = url
        self._sqlite = not is_postgres(url)
        if engine is None:
            engine = open_engine(url)
            migrate(engine)
        self.engine: Engine = engine

    def close(self) -> None:
        self.engine.dispose()

    # --- writing -------------------------------------------------------------------------------
    @outage_is_unavailable
    def add(
        self, project: str, document_id: str, annotator: str, tool: str, doc: Document
    ) -> StoredCorrection | None:
        """Store a new version of ``doc``; None when it equals the newest stored version (a resend)."""
        digest = content_hash(doc)
        payload = json.dumps(to_dict(doc), ensure_ascii=False)
        return self._append(project, document_id, annotator, tool, digest, payload, deleted=False)

    @outage_is_unavailable
    def delete(
        self, project: str, document_id: str, annotator: str, tool: str = ""
    ) -> StoredCorrection | None:
        """Record that the annotation was deleted (history is kept); None when there is nothing to delete."""
        return self._append(project, document_id, annotator, tool, "", None, deleted=True)

    def _append(
        self,
        project: str,
        document_id: str,
        annotator: str,
        tool: str,
        digest: str,
        payload: str | None,
        *,
        deleted: bool,
    ) -> StoredCorrection | None:
        for _ in range(_RETRIES):
            try:
                with self._begin() as conn:
                    last = conn.execute(
                        sa.select(corrections.c.revision, corrections.c.content_hash, corrections.c.deleted)
                        .where(
                            corrections.c.project == project,
                            corrections.c.document_id == document_id,
                            corrections.c.annotator == annotator,
                        )
                        .order_by(corrections.c.revision.desc())
                        .limit(1)
                    ).first()
                    if deleted and (last is None or last.deleted):
                        return None
                    if not deleted and last is not None and not last.deleted and last.content_hash == digest:
                        return None
                    row = {
                        "project": project,
                        "document_id": document_id,
                        "annotator": annotator,
                        "tool": tool,
                        "revision": (last.revision + 1) if last is not None else 1,
                        "created": datetime.now(UTC),
                        "content_hash": digest,
                        "deleted": deleted,
                        "document": payload,
                    }
                    new_id = conn.execute(sa.insert(corrections).values(**row)).inserted_primary_key[0]
                # Committed: only now is the correction acknowledged.
                return _to_stored({"id": new_id, **row})
            except IntegrityError:
                log.info("revision race on a document of project %s; retrying", project)
        raise ConfigError(f"could not store a correction after {_RETRIES} attempts", source=self.url)

    # --- reading -------------------------------------------------------------------------------
    @outage_is_unavailable
    def latest(self, project: str | None = None) -> list[Document]:
        """The newest version per (document, annotator), tombstones left out; all projects for None.

        Each document's ``meta["correction"]`` says where it came from (store id, project, annotator,
        tool, revision, time)."""
        newest = (
            sa.select(sa.func.max(corrections.c.id))
            .group_by(corrections.c.project, corrections.c.document_id, corrections.c.annotator)
            .scalar_subquery()
        )
        query = sa.select(corrections).where(corrections.c.id.in_(newest), corrections.c.deleted.is_(False))
        if project is not None:
            query = query.where(corrections.c.project == project)
        docs = []
        for stored in self._rows(query.order_by(corrections.c.id)):
            assert stored.document is not None  # not a tombstone
            docs.append(stored.document)
        return docs

    @outage_is_unavailable
    def history(self, project: str, document_id: str) -> list[StoredCorrection]:
        """Every stored version of one document (all annotators, tombstones included), oldest first."""
        return self._rows(
            sa.select(corrections)
            .where(corrections.c.project == project, corrections.c.document_id == document_id)
            .order_by(corrections.c.id)
        )

    @outage_is_unavailable
    def get(self, correction_id: int) -> StoredCorrection | None:
        rows = self._rows(sa.select(corrections).where(corrections.c.id == correction_id))
        return rows[0] if rows else None

    @outage_is_unavailable
    def count_since(self, project: str | None, since_id: int) -> int:
        """How many versions (tombstones included) were stored after ``since_id``."""
        query = sa.select(sa.func.count()).select_from(corrections).where(corrections.c.id > since_id)
        if project is not None:
            query = query.where(corrections.c.project == project)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    @outage_is_unavailable
    def last_id(self, project: str | None = None) -> int:
        query = sa.select(sa.func.max(corrections.c.id))
        if project is not None:
            query = query.where(corrections.c.project == project)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    @outage_is_unavailable
    def daily_counts(self) -> dict[str, dict[str, int]]:
        """Stored versions per project and UTC day (``YYYY-MM-DD``), oldest day first."""
        out: dict[str, dict[str, int]] = {}
        query = sa.select(corrections.c.project, corrections.c.created).order_by(corrections.c.id)
        with self.engine.connect() as conn:
            for project, created in conn.execute(query):
                day = (created if created.tzinfo else created.replace(tzinfo=UTC)).astimezone(UTC)
                days = out.setdefault(project, {})
                days[day.date().isoformat()] = days.get(day.date().isoformat(), 0) + 1
        return {p: dict(sorted(d.items())) for p, d in sorted(out.items())}

    @outage_is_unavailable
    def projects(self) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(corrections.c.project).distinct().order_by(corrections.c.project))
            return [r[0] for r in rows]

    def check(self) -> list[str]:
        """Consistency problems found (empty when sound): SQLite's integrity check and revision gaps."""
        problems = []
        with self.engine.connect() as conn:
            if self._sqlite:
                result = conn.exec_driver_sql("PRAGMA integrity_check").scalar()
                if result != "ok":
                    problems.append(f"sqlite integrity_check: {result}")
            rows = conn.execute(
                sa.select(
                    corrections.c.project,
                    corrections.c.document_id,
                    corrections.c.annotator,
                    sa.func.count(),
                    sa.func.max(corrections.c.revision),
                ).group_by(corrections.c.project, corrections.c.document_id, corrections.c.annotator)
            )
            for project, doc_id, annotator, n, top in rows:
                if n != top:
                    problems.append(f"revisions of [{project}/{doc_id}/{annotator}]: {n} rows, top {top}")
        return problems

    # --- plumbing ------------------------------------------------------------------------------
    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite), committed on leaving the block."""
        with self.engine.connect().execution_options(**{IMMEDIATE: True}) as conn, conn.begin():
            yield conn

    def _rows(self, query: sa.Select[Any]) -> list[StoredCorrection]:
        with self.engine.connect() as conn:
            return [_to_stored(dict(r._mapping)) for r in conn.execute(query)]


def _to_stored(row: dict[str, Any]) -> StoredCorrection:
    created = row["created"]
    if created.tzinfo is None:  # SQLite keeps no time zone; everything is written in UTC
        created = created.replace(tzinfo=UTC)
    doc = None
    if row["document"] is not None:
        source = f"correction {row['id']}"
        try:
            doc = from_dict(json.loads(row["document"]), source=source)
        except json.JSONDecodeError:
            raise FormatError("stored document is not JSON", source=source) from None
        doc.meta["correction"] = {
            "id": row["id"],
            "project": row["project"],
            "annotator": row["annotator"],
            "tool": row["tool"],
            "revision": row["revision"],
            "created": created.isoformat(timespec="seconds"),
        }
    return StoredCorrection(
        id=row["id"],
        project=row["project"],
        document_id=row["document_id"],
        annotator=row["annotator"],
        tool=row["tool"],
        revision=row["revision"],
        created=created,
        content_hash=row["content_hash"],
        deleted=bool(row["deleted"]),
        document=doc,
    )


__all__ = ["CorrectionStore", "StoredCorrection", "content_hash"]
