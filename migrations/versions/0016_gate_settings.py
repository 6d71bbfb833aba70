"""gate settings: what the homeserver gate needs of the bot's config, published by the bot

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 17:00:00

The gate in Synapse used to carry copies of the bot's admins, admin room and extra caveats
in homeserver.yaml, which drifted whenever the bot's config changed. Now the running bot
writes them here at every start (`bot/storage/gate_settings.py`), one row per bot user id,
with the bot's version and the schema revision it runs (the gate warns when they differ
from its own), signed with the register key like clearance and room rows: a row that does
not verify is ignored by the gate, so a database writer cannot make anyone an admin.

On PostgreSQL the table carries revision 0013's fence (before each statement and at
commit), so a node that lost the lease cannot publish either.
"""

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The fence statements of revision 0013; its module name starts with a digit.
_HA = importlib.import_module("migrations.versions.0013_ha_leader")


def upgrade() -> None:
    op.create_table(
        "gate_settings",
        sa.Column("bot_user_id", sa.String(length=255), nullable=False),
        sa.Column("admins", sa.JSON(), nullable=False),
        sa.Column("admin_room", sa.String(length=32), nullable=True),
        sa.Column("caveats", sa.JSON(), nullable=False),
        sa.Column("bot_version", sa.String(length=64), nullable=False),
        sa.Column("schema_revision", sa.String(length=32), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signature", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("bot_user_id", name=op.f("pk_gate_settings")),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    schema = _HA.current_schema()
    for statement in _HA.fence("gate_settings", schema):
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("gate_settings")  # its triggers go with it
