"""release holds: national release control, items held for a second officer's approval

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 20:00:00

A route may ask for a second officer's approval before a national cell's item leaves it.
Such an item is stored here instead of being sent: `release_requests` (one per item, with
the item's clear label, the sender and when the hold expires) and `release_targets` (one
per target room, with the would-be copy sealed and the decision: held, approved, denied,
expired or withdrawn). An approval moves a target to approved and writes its relay ledger
row in the same transaction, so a crash between the two cannot lose or repeat the copy.

On PostgreSQL both tables carry revision 0013's fence (before each statement and at
commit), so a node that lost the lease can neither hold nor release.
"""

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The fence statements of revision 0013; its module name starts with a digit.
_HA = importlib.import_module("migrations.versions.0013_ha_leader")
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "release_requests",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("item_event_id", sa.String(length=255), nullable=False),
        sa.Column("source_key", sa.String(length=32), nullable=False),
        sa.Column("source_room_id", sa.String(length=255), nullable=False),
        sa.Column("sender", sa.String(length=255), nullable=False),
        sa.Column("sender_device", sa.String(length=255), nullable=True),
        sa.Column("label", sa.String(length=300), nullable=False),
        sa.Column("scheme", sa.String(length=8), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("held_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("notice_event_id", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_release_requests")),
        sa.UniqueConstraint("item_event_id", name=op.f("uq_release_requests_item_event_id")),
    )
    with op.batch_alter_table("release_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_release_requests_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_release_requests_notice_event_id"), ["notice_event_id"], unique=False
        )
    op.create_table(
        "release_targets",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("request_id", _BIG_ID, nullable=False),
        sa.Column("target_key", sa.String(length=32), nullable=False),
        sa.Column("target_room_id", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("decided_by", sa.String(length=255), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["release_requests.id"],
            name=op.f("fk_release_targets_request_id_release_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_release_targets")),
        sa.UniqueConstraint("request_id", "target_key", name=op.f("uq_release_targets_request_id")),
    )
    with op.batch_alter_table("release_targets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_release_targets_request_id"), ["request_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_release_targets_state"), ["state"], unique=False)
    if op.get_bind().dialect.name != "postgresql":
        return
    schema = _HA.current_schema()
    for table in ("release_requests", "release_targets"):
        for statement in _HA.fence(table, schema):
            op.execute(statement)


def downgrade() -> None:
    op.drop_table("release_targets")  # its indexes and triggers go with it
    op.drop_table("release_requests")
