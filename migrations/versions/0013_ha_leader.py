"""ha leader: the lease row of a high-availability pair, and the fence on every table

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 14:00:00

`ha_leader` holds one row: the epoch (fencing token), the node holding the lease and when
the lease ends on the database's clock. On PostgreSQL triggers on every other table refuse a
write from a session whose `liaison.epoch` setting names an epoch that no longer holds the
lease, before each statement and again at commit: an active that was paused or cut off, and
did not notice, can write nothing after a standby took over. Sessions with an empty setting
(the CLI, a bot that is not part of a pair, Alembic) are not fenced. SQLite has no pair (high
availability needs PostgreSQL), so there only the table is made.
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

# Two checks, both against the lease row named with its schema (the function's search_path
# is pinned, so a temporary table cannot stand in for it):
# - before each statement (and TRUNCATE, which has no rows): the session's epoch holds the
#   lease now (read without a lock: a paused node's open transaction must never hold up the
#   takeover that fences it);
# - at commit (a deferred constraint trigger, for each row written): it still does. There the
#   row is read FOR KEY SHARE, which waits for a takeover in progress (FOR UPDATE) but not for
#   a renewal, so a transaction begun before a takeover cannot commit after it, whatever its
#   isolation level (REPEATABLE READ fails with a serialization error instead).
FENCE = """
CREATE OR REPLACE FUNCTION {schema}.liaison_fence() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mine text := current_setting('liaison.epoch', true);
BEGIN
    IF mine IS NULL OR mine = '' THEN
        RETURN NULL;  -- not a node of a pair: the CLI, a single bot, a migration
    END IF;
    IF TG_LEVEL = 'ROW' THEN  -- at commit
        PERFORM 1 FROM {schema}.ha_leader WHERE id = 1 AND epoch = mine::bigint FOR KEY SHARE;
    ELSE  -- before a statement: no lock, so an open transaction never holds up a takeover
        PERFORM 1 FROM {schema}.ha_leader WHERE id = 1 AND epoch = mine::bigint;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'liaison-bot fenced: epoch % no longer holds the lease', mine
            USING ERRCODE = 'LB001';
    END IF;
    RETURN NULL;
END
$$
"""


def fence(table: str, schema: str) -> list[str]:
    """The statements that fence one table (a later revision adding a table uses them)."""
    return [
        f"CREATE TRIGGER liaison_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE "
        f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {schema}.liaison_fence()",
        f"CREATE CONSTRAINT TRIGGER liaison_fence_commit AFTER INSERT OR UPDATE OR DELETE "
        f"ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
        f"EXECUTE FUNCTION {schema}.liaison_fence()",
    ]


def current_schema() -> str:
    name = op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar()
    return str(name)


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
    schema = current_schema()
    op.execute(FENCE.format(schema=schema))
    for table in FENCED:
        for statement in fence(table, schema):
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in FENCED:
            op.execute(f"DROP TRIGGER IF EXISTS liaison_fence ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS liaison_fence_commit ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {current_schema()}.liaison_fence()")
    op.drop_table("ha_leader")
