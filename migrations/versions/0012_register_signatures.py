"""register signatures: clearance and room rows carry an Ed25519 signature

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 11:00:00

The key is derived from the data key, which a migration does not have: existing rows stay
NULL here and the bot signs them at its next start, once (Store.key_register, recorded in
the audit log as `register.keyed`). Until then an unsigned row is refused, as any row that
does not verify; after it, an unsigned row is a forgery and reported as one.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("clearances", "rooms"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("signature", sa.String(length=100), nullable=True))


def downgrade() -> None:
    for table in ("rooms", "clearances"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("signature")
