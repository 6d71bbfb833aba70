"""cross-signing, identity pending, pending events

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 12:00:02.691447
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cross_signing",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("master_key", sa.String(length=64), nullable=False),
        sa.Column("sealed", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cross_signing")),
    )
    op.create_table(
        "pending_events",
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("sender", sa.String(length=255), nullable=False),
        sa.Column("event", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_pending_events")),
    )
    with op.batch_alter_table("pending_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pending_events_resolved_at"), ["resolved_at"], unique=False
        )

    with op.batch_alter_table("clearances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("identity_pending", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clearances", schema=None) as batch_op:
        batch_op.drop_column("identity_pending")

    with op.batch_alter_table("pending_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pending_events_resolved_at"))

    op.drop_table("pending_events")
    op.drop_table("cross_signing")
