"""ha leader (PLACEHOLDER on branch ha-cryptostore): only the fence function

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 14:00:00

The real revision 0013 (table `ha_leader`, the function `liaison_fence()` and its trigger on
every table of the bot's) is being written on main. Revision 0014 (the crypto store's
tables) attaches that trigger to its own tables and so needs the function, and Alembic
needs a 0013 to run 0014 at all: this file stands in for it on this branch only, with the
same function and nothing else (no table, so the models and the migrations still agree).
Main's file replaces it at the merge; the function's body is main's, so what 0014's
triggers do is the same before and after.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FENCE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS liaison_fence()")
