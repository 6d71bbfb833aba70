"""room snapshots: each joined room's members and encryption as of the sync token, sealed

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 17:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Empty at first: the next start syncs in full, as before, and fills it.
    op.create_table(
        "room_snapshots",
        sa.Column("room_id", sa.String(255), primary_key=True),
        sa.Column("sealed", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("room_snapshots")
