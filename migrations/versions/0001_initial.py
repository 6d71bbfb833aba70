"""clearances, rooms, audit log, sync state

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25 11:37:44.097248
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    # The head row exists from the start, so every append locks it (SELECT … FOR UPDATE)
    # and concurrent writers queue instead of racing to create it.
    op.bulk_insert(
        sa.table("audit_head", sa.column("id"), sa.column("last_id"), sa.column("hash")),
        [{"id": 1, "last_id": 0, "hash": "0" * 64}],
    )
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_at"), ["at"], unique=False)

    op.create_table(
        "clearances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("nationality", sa.String(length=3), nullable=False),
        sa.Column("expires", sa.Date(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("identity_key", sa.String(length=64), nullable=True),
        sa.Column("identity_pinned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clearances")),
        sa.UniqueConstraint("user_id", name=op.f("uq_clearances_user_id")),
    )
    op.create_table(
        "rooms",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("label", sa.String(length=300), nullable=False),
        sa.Column("scheme", sa.String(length=8), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("audience", sa.JSON(), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rooms")),
        sa.UniqueConstraint("key", name=op.f("uq_rooms_key")),
        sa.UniqueConstraint("room_id", name=op.f("uq_rooms_room_id")),
    )
    op.create_table(
        "sync_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("next_batch", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_state")),
    )
    op.create_table(
        "clearance_caveats",
        sa.Column("clearance_id", sa.Integer(), nullable=False),
        sa.Column("caveat", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["clearance_id"],
            ["clearances.id"],
            name=op.f("fk_clearance_caveats_clearance_id_clearances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("clearance_id", "caveat", name=op.f("pk_clearance_caveats")),
    )
    op.create_table(
        "clearance_grants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("clearance_id", sa.Integer(), nullable=False),
        sa.Column("scheme", sa.String(length=8), nullable=False),
        sa.Column("level", sa.String(length=64), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["clearance_id"],
            ["clearances.id"],
            name=op.f("fk_clearance_grants_clearance_id_clearances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clearance_grants")),
        sa.UniqueConstraint(
            "clearance_id", "scheme", name=op.f("uq_clearance_grants_clearance_id")
        ),
    )
    with op.batch_alter_table("clearance_grants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_clearance_grants_clearance_id"), ["clearance_id"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("clearance_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_clearance_grants_clearance_id"))

    op.drop_table("clearance_grants")
    op.drop_table("clearance_caveats")
    op.drop_table("sync_state")
    op.drop_table("rooms")
    op.drop_table("clearances")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_at"))

    op.drop_table("audit_log")
    op.drop_table("audit_head")
