"""acted ciphertexts: refuse an encrypted message replayed under a new event id

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 11:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "acted_ciphertexts",
        sa.Column("ciphertext", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("acted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ciphertext", name=op.f("pk_acted_ciphertexts")),
    )


def downgrade() -> None:
    op.drop_table("acted_ciphertexts")
