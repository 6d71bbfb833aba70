"""room servers: the homeservers a managed room's members may come from (federation)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL: a room stored before this revision; the bot writes its servers at the next start.
    with op.batch_alter_table("rooms") as batch:
        batch.add_column(sa.Column("servers", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rooms") as batch:
        batch.drop_column("servers")
