"""Training jobs in the database, so every replica answers ``/jobs/{id}`` and sees progress.

At most one job per project is queued at a time (a unique index on the queued rows): a trigger
while one is queued joins it. The job library decides when and where a job runs; this table says
what it is doing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from recommender.store.database import outage_is_unavailable
from recommender.store.tables import training_jobs

_FIELDS = ("state", "outcome", "stage", "progress", "candidate", "message", "triggers", "attempts")


class JobRecords:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @outage_is_unavailable
    def create(self, project: str, reason: str, last_correction: int) -> int | None:
        """A new queued job; None when one is queued for ``project`` already."""
        row = {
            "project": project,
            "reason": reason[:500],
            "state": "queued",
            "stage": "queued",
            "progress": 0.0,
            "created": datetime.now(UTC),
            "metrics": "{}",
            "triggers": 1,
            "attempts": 0,
            "last_correction": last_correction,
        }
        try:
            with self.engine.begin() as conn:
                return int(conn.execute(sa.insert(training_jobs).values(**row)).inserted_primary_key[0])
        except IntegrityError:
            return None

    @outage_is_unavailable
    def join(self, project: str, last_correction: int) -> int | None:
        """Count one more trigger on the queued job of ``project``; its id, None when none is queued."""
        queued = (training_jobs.c.project == project) & (training_jobs.c.state == "queued")
        with self.engine.begin() as conn:
            job_id = conn.execute(sa.select(training_jobs.c.id).where(queued)).scalar()
            if job_id is None:
                return None
            conn.execute(
                sa.update(training_jobs)
                .where(training_jobs.c.id == job_id)
                .values(
                    triggers=training_jobs.c.triggers + 1,
                    last_correction=sa.func.greatest(training_jobs.c.last_correction, last_correction)
                    if conn.dialect.name == "postgresql"
                    else sa.func.max(training_jobs.c.last_correction, last_correction),
                )
            )
            return int(job_id)

    @outage_is_unavailable
    def claim(self, job_id: int, last_correction: int) -> dict[str, Any] | None:
        """Mark the job running (again, when a dead worker's run is retried); None if it is gone.
        ``last_correction`` is the newest correction the run will see: later ones count for the next."""
        with self.engine.begin() as conn:
            done = conn.execute(
                sa.update(training_jobs)
                .where(training_jobs.c.id == job_id, training_jobs.c.state.in_(("queued", "running")))
                .values(
                    state="running",
                    stage="starting",
                    progress=0.0,
                    started=datetime.now(UTC),
                    attempts=training_jobs.c.attempts + 1,
                    last_correction=last_correction,
                )
            ).rowcount
        return self.get(job_id) if done else None

    @outage_is_unavailable
    def save(self, job_id: int, values: dict[str, Any]) -> None:
        row = {k: values[k] for k in _FIELDS if k in values}
        if "metrics" in values:
            row["metrics"] = json.dumps(values["metrics"])
        if values.get("finished") is not None:
            row["finished"] = datetime.fromtimestamp(values["finished"], UTC)
        with self.engine.begin() as conn:
            conn.execute(sa.update(training_jobs).where(training_jobs.c.id == job_id).values(**row))

    def fail(self, job_id: int, message: str) -> None:
        self.save(
            job_id,
            {
                "state": "failed",
                "stage": "failed",
                "message": message,
                "finished": datetime.now(UTC).timestamp(),
            },
        )

    @outage_is_unavailable
    def get(self, job_id: int) -> dict[str, Any] | None:
        rows = self._rows(sa.select(training_jobs).where(training_jobs.c.id == job_id))
        return rows[0] if rows else None

    @outage_is_unavailable
    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs, oldest first."""
        newest = sa.select(training_jobs).order_by(training_jobs.c.id.desc()).limit(limit)
        return list(reversed(self._rows(newest)))

    @outage_is_unavailable
    def running(self, project: str) -> bool:
        query = sa.select(sa.func.count()).where(
            training_jobs.c.project == project, training_jobs.c.state == "running"
        )
        with self.engine.connect() as conn:
            return bool(conn.execute(query).scalar_one())

    @outage_is_unavailable
    def last_correction(self, project: str) -> int:
        """The newest correction id any job of ``project`` was queued with (0 before the first)."""
        query = sa.select(sa.func.max(training_jobs.c.last_correction)).where(
            training_jobs.c.project == project
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def _rows(self, query: sa.Select[Any]) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [_to_dict(dict(r._mapping)) for r in conn.execute(query)]


def _to_dict(row: dict[str, Any]) -> dict[str, Any]:
    def stamp(t: datetime | None) -> float | None:
        if t is None:
            return None
        return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()  # SQLite keeps no time zone

    return {
        **{k: row[k] for k in ("id", "project", "reason", *_FIELDS, "last_correction")},
        "metrics": json.loads(row["metrics"]),
        "created": stamp(row["created"]),
        "started": stamp(row["started"]),
        "finished": stamp(row["finished"]),
    }


__all__ = ["JobRecords"]
