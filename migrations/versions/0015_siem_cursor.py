"""siem cursor: how far the audit log has been delivered to the SOC's SIEM

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08 10:00:00

The audit log is the exporter's outbox (bot/siem/exporter.py): rows are sent in id order,
and `siem_cursor` (one row) names the last row the SIEM confirmed, with its hash, so the
next batch starts after it and its first link can be checked against it. The row is only
moved after a confirmed batch, under a row lock, and only if nobody moved it meanwhile (a
rewind from the CLI, another exporter). It also keeps the current outage (failures, since
when, the last error) and the installation id the exported events carry, made once.

The row is made here, not started (`last_id` NULL) and with a random installation id, so
that the id exists once per database before anything reads it (`audit export` needs it
too); `[siem] start` decides where the cursor begins when the exporter first runs.

On PostgreSQL the table carries revision 0013's fence (before each statement and at
commit), so a node that lost the lease cannot move the cursor either.
"""

import importlib
import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The fence statements of revision 0013 (made for later revisions that add a table); its
# module name starts with a digit, hence importlib.
_HA = importlib.import_module("migrations.versions.0013_ha_leader")


def upgrade() -> None:
    op.create_table(
        "siem_cursor",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("installation", sa.String(length=36), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=True),
        sa.Column("last_hash", sa.String(length=64), nullable=True),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_siem_cursor")),
    )
    # The row, not started, with this database's installation id: made here, once, so no
    # two processes can race to make it.
    op.execute(
        sa.text(
            "INSERT INTO siem_cursor (id, installation, failures) VALUES (1, :installation, 0)"
        ).bindparams(installation=str(uuid.uuid4()))
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    schema = _HA.current_schema()
    for statement in _HA.fence("siem_cursor", schema):
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("siem_cursor")  # its triggers go with it
