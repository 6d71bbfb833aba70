"""intel items and relay ledger

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 12:15:48.376260
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "intel_items",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("room_key", sa.String(length=32), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("sender", sa.String(length=255), nullable=False),
        sa.Column("label", sa.String(length=300), nullable=False),
        sa.Column("scheme", sa.String(length=8), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("precedence", sa.Integer(), nullable=False),
        sa.Column("exercise", sa.Boolean(), nullable=False),
        sa.Column("topics", sa.JSON(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("origin", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("redacted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_intel_items")),
        sa.UniqueConstraint("event_id", name=op.f("uq_intel_items_event_id")),
    )
    with op.batch_alter_table("intel_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_intel_items_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_intel_items_room_key"), ["room_key"], unique=False)

    op.create_table(
        "relays",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("txn_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source_event_id", sa.String(length=255), nullable=False),
        sa.Column("item_event_id", sa.String(length=255), nullable=False),
        sa.Column("target_key", sa.String(length=32), nullable=False),
        sa.Column("target_room_id", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("target_event_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relays")),
        sa.UniqueConstraint("txn_id", name=op.f("uq_relays_txn_id")),
    )
    with op.batch_alter_table("relays", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_relays_item_event_id"), ["item_event_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_relays_source_event_id"), ["source_event_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_relays_state"), ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("relays", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_relays_state"))
        batch_op.drop_index(batch_op.f("ix_relays_source_event_id"))
        batch_op.drop_index(batch_op.f("ix_relays_item_event_id"))

    op.drop_table("relays")
    with op.batch_alter_table("intel_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_intel_items_room_key"))
        batch_op.drop_index(batch_op.f("ix_intel_items_created_at"))

    op.drop_table("intel_items")
