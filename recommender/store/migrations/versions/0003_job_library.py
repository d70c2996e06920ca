"""The job library's tables (procrastinate), on PostgreSQL only: SQLite keeps the in-process loop.

Revision ID: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    from procrastinate.schema import SchemaManager

    # The schema of the installed procrastinate; its own later migrations become revisions here.
    # Straight to psycopg, in the migration's transaction: the SQL has literal % signs.
    bind.connection.driver_connection.execute(SchemaManager.get_schema())  # type: ignore[union-attr]


def downgrade() -> None:
    raise NotImplementedError("the job library's tables are dropped with procrastinate's own tools")
