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

# Predictions of slow (generative) models, computed ahead of the annotator: the queue and the cache in
# one row per (model version, kind of input, input hash). ``input`` is the note to predict on (the
# store keeps note text already); ``document`` the prediction once done.
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(40), nullable=False),  # served model name (default, or KIWI_SERVE_MODELS)
    sa.Column("model_version", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),  # text: from the text alone; given: entities given
    sa.Column("input_hash", sa.String(64), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),  # queued, running, done, failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
    sa.Column("input", sa.Text, nullable=False),  # JSON document
    sa.Column("document", sa.Text, nullable=True),  # JSON document, when done
    sa.Column("error", sa.String(500), nullable=True),  # why it failed (never note text)
    sa.UniqueConstraint("model_version", "kind", "input_hash", name="uq_prediction_key"),
    sa.Index("ix_predictions_state", "model", "state", "id"),
)

# What a model suggested for a note, as the annotator was shown it: offsets, labels and scores only
# (``annotations`` is JSON ``{"spans": [[begin, end, label, score]], "relations": [[head, tail, label,
# score]]}``, relations by span index), never note text; ``text_hash`` ties it to one text of the note.
suggestions = sa.Table(
    "suggestions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model", sa.String(40), nullable=False),  # served model name
    sa.Column("model_version", sa.String(200), nullable=False),  # the version that predicted
    sa.Column("fallback_for", sa.String(200), nullable=True),  # the slow model it stood in for
    sa.Column("tool", sa.String(20), nullable=False),  # labelstudio, inception, precompute
    sa.Column("task", sa.String(20), nullable=False),  # all, entities, relations: what was suggested
    sa.Column("project", sa.String(200), nullable=False),
    sa.Column("document_id", sa.String(500), nullable=False),
    sa.Column("text_hash", sa.String(64), nullable=False),
    sa.Column("annotations", sa.Text, nullable=False),
    sa.Index("ix_suggestions_note", "project", "document_id", "id"),
    sa.Index("ix_suggestions_created", "created"),
)

# A stored correction scored against the latest suggestion for its note: per-label match counts,
# what happened to each suggestion and the edits (JSON ``figures``).
suggestion_scores = sa.Table(
    "suggestion_scores",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("correction_id", sa.Integer, nullable=False),
    sa.Column("suggestion_id", sa.Integer, nullable=False),
    sa.Column("model_version", sa.String(200), nullable=False),
    sa.Column("task", sa.String(20), nullable=False),
    sa.Column("project", sa.String(200), nullable=False),
    sa.Column("document_id", sa.String(500), nullable=False),  # the note (suggestion's id)
    sa.Column("annotator", sa.String(200), nullable=False),
    sa.Column("figures", sa.Text, nullable=False),
    sa.Index("ix_suggestion_scores_version", "model_version", "id"),
    sa.Index("ix_suggestion_scores_created", "created"),
)

__all__ = ["corrections", "metadata", "predictions", "suggestion_scores", "suggestions", "training_jobs"]
