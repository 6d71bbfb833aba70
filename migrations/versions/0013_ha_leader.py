"""ha leader: the lease row of a high-availability pair, and the fence on every table

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 14:00:00

`ha_leader` holds one row: the epoch (fencing token), the node holding the lease and when
the lease ends on the database's clock. On PostgreSQL a statement trigger on every other
table refuses a write from a session whose `liaison.epoch` setting names an epoch that no
longer holds the lease: an active that was paused or cut off, and did not notice, can write
nothing after a standby took over. Sessions without the setting (the CLI, a bot that is not
part of a pair, Alembic) are not fenced. SQLite has no pair (high availability needs
PostgreSQL), so there only the table is made.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every table of the bot's at this revision. A later revision that adds a table attaches
# the trigger to it too (tests/test_ha_lease.py checks that every table has it).
FENCED = (
    "clearances",
    "clearance_grants",
    "clearance_caveats",
    "rooms",
    "audit_log",
    "audit_head",
    "room_snapshots",
    "sync_state",
    "bot_session",
    "handled_events",
    "acted_ciphertexts",
    "direct_rooms",
    "cross_signing",
    "pending_events",
    "intel_items",
    "relays",
    "digest_schedules",
    "digest_runs",
    "routes",
)

FENCE = """
CREATE OR REPLACE FUNCTION liaison_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    mine text := current_setting('liaison.epoch', true);
BEGIN
    IF mine IS NULL OR mine = '' THEN
        RETURN NULL;  -- not a node of a pair: the CLI, a single bot, a migration
    END IF;
    IF NOT EXISTS (SELECT 1 FROM ha_leader WHERE id = 1 AND epoch = mine::bigint) THEN
        RAISE EXCEPTION 'liaison-bot fenced: epoch % no longer holds the lease', mine
            USING ERRCODE = 'LB001';
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "ha_leader",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(length=100), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ha_leader")),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FENCE)
    for table in FENCED:
        op.execute(
            f"CREATE TRIGGER liaison_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION liaison_fence()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in FENCED:
            op.execute(f"DROP TRIGGER IF EXISTS liaison_fence ON {table}")
        op.execute("DROP FUNCTION IF EXISTS liaison_fence()")
    op.drop_table("ha_leader")
