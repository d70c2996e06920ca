"""The database tables, in one place: the migrations create them and the store and job records use them.

Changing a table here needs a new revision in ``migrations/versions/`` (Alembic): the service
applies the revisions at start, so replicas never race on ``create_all``.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

corrections = sa.Table(
    "corrections",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project", sa.String(200), nullable=False),
    sa.Column("document_id", sa.String(500), nullable=False),
    sa.Column("annotator", sa.String(200), nullable=False),
    sa.Column("tool", sa.String(50), nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    sa.Column("document", sa.Text, nullable=True),  # None for a tombstone
    sa.UniqueConstraint("project", "document_id", "annotator", "revision", name="uq_revision"),
    sa.Index("ix_corrections_project_id", "project", "id"),
)

# A retraining job as every replica sees it (the job library keeps only when and where it runs).
training_jobs = sa.Table(
    "training_jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project", sa.String(200), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),  # queued, running, finished, failed
    sa.Column("outcome", sa.String(20), nullable=True),  # promoted, rejected
    sa.Column("stage", sa.String(200), nullable=False),
    sa.Column("progress", sa.Float, nullable=False),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished", sa.DateTime(timezone=True), nullable=True),
    sa.Column("candidate", sa.String(200), nullable=True),
    sa.Column("metrics", sa.Text, nullable=False),  # JSON
    sa.Column("message", sa.Text, nullable=True),
    sa.Column("triggers", sa.Integer, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    # The newest correction id when the job was queued: the debounce counts corrections after it.
    sa.Column("last_correction", sa.Integer, nullable=False),
    sa.Index(
        "uq_training_jobs_queued",
        "project",
        unique=True,
        sqlite_where=sa.text("state = 'queued'"),
        postgresql_where=sa.text("state = 'queued'"),
    ),
)

__all__ = ["corrections", "metadata", "training_jobs"]
