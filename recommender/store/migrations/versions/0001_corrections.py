"""The corrections table as it was before migrations; a database made then is adopted as it is.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("corrections"):
        return  # created by create_all before there were migrations: the same table
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(200), nullable=False),
        sa.Column("document_id", sa.String(500), nullable=False),
        sa.Column("annotator", sa.String(200), nullable=False),
        sa.Column("tool", sa.String(50), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("document", sa.Text, nullable=True),
        sa.UniqueConstraint("project", "document_id", "annotator", "revision", name="uq_revision"),
    )
    op.create_index("ix_corrections_project_id", "corrections", ["project", "id"])


def downgrade() -> None:
    op.drop_table("corrections")
