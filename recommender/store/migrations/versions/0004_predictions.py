"""The prediction cache and queue of slow models.

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(40), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("input_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("document", sa.Text, nullable=True),
        sa.Column("error", sa.String(500), nullable=True),
        sa.UniqueConstraint("model_version", "kind", "input_hash", name="uq_prediction_key"),
    )
    op.create_index("ix_predictions_state", "predictions", ["model", "state", "id"])


def downgrade() -> None:
    op.drop_table("predictions")
