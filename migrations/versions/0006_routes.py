"""routes from chat

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 13:34:32.153929
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "routes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_key", sa.String(length=32), nullable=False),
        sa.Column("target_key", sa.String(length=32), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routes")),
        sa.UniqueConstraint("source_key", "target_key", name=op.f("uq_routes_source_key")),
    )


def downgrade() -> None:
    op.drop_table("routes")
