"""The suggestion log (what each model version suggested per note) and the corrections scored against it.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "suggestions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(40), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("fallback_for", sa.String(200), nullable=True),
        sa.Column("tool", sa.String(20), nullable=False),
        sa.Column("task", sa.String(20), nullable=False),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("document_id", sa.String(500), nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("annotations", sa.Text, nullable=False),
    )
    op.create_index("ix_suggestions_note", "suggestions", ["project", "document_id", "id"])
    op.create_index("ix_suggestions_created", "suggestions", ["created"])
    op.create_table(
        "suggestion_scores",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("correction_id", sa.Integer, nullable=False),
        sa.Column("suggestion_id", sa.Integer, nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("task", sa.String(20), nullable=False),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("document_id", sa.String(500), nullable=False),
        sa.Column("annotator", sa.String(200), nullable=False),
        sa.Column("figures", sa.Text, nullable=False),
    )
    op.create_index("ix_suggestion_scores_version", "suggestion_scores", ["model_version", "id"])
    op.create_index("ix_suggestion_scores_created", "suggestion_scores", ["created"])


def downgrade() -> None:
    op.drop_table("suggestion_scores")
    op.drop_table("suggestions")
