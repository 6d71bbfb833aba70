"""crypto store: nio's Olm and Megolm state in PostgreSQL, for `crypto_store = "database"`

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 16:00:00

Two bot processes of a high-availability pair share one database and one Matrix device, so
the crypto store (Olm account and sessions, Megolm inbound sessions, device keys and their
trust, outgoing key requests, encrypted rooms) must live in the database, not in a folder
on one host. `bot/matrix/dbstore.py` reads and writes these tables through peewee (nio's
own database layer); they are made here, never by nio at run time, so that the schema
changes only through Alembic, as every other table does.

They live in a schema of their own, not among the bot's SQLAlchemy models: `nio_crypto`
beside the default `public`, or `<schema>_nio_crypto` when the database URL gives the bot
another schema (search_path), so two bots in two schemas of one database keep apart.
`DatabaseStore` finds them by the same rule. Every table carries the fence of revision 0013
(a fenced process of a pair writes nothing here either). The store checks `storeversion`
(nio's layout version 2) at start.

SQLite: nothing (the database crypto store needs PostgreSQL; the config refuses it
otherwise). Downgrade drops the schema and everything in it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# nio's store layout version these tables follow (nio.store.MatrixStore.store_version).
STORE_VERSION = 2

TABLES = (
    "storeversion",
    "accounts",
    "olmsessions",
    "megolminboundsessions",
    "forwardedchains",
    "devicekeys",
    "keys",
    "devicetruststate",
    "encryptedrooms",
    "outgoingkeyrequests",
    "synctokens",
)


def crypto_schema(bot_schema: str) -> str:
    """The crypto store's schema for the bot's (bot.matrix.dbstore applies the same rule)."""
    return "nio_crypto" if bot_schema == "public" else f"{bot_schema}_nio_crypto"


def _schema() -> str:
    current = op.get_bind().execute(sa.text("SELECT current_schema()")).scalar()
    if not current:
        raise RuntimeError("no current schema: the database URL's search_path names none")
    return crypto_schema(str(current))


def _account(schema: str) -> sa.Column[int]:
    return sa.Column(
        "account_id",
        sa.Integer(),
        sa.ForeignKey(f"{schema}.accounts.id", ondelete="CASCADE"),
        nullable=False,
    )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = _schema()
    quoted = bind.dialect.identifier_preparer.quote_schema(schema)
    op.execute(f"CREATE SCHEMA {quoted}")
    op.create_table(
        "storeversion",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        schema=schema,
    )
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("device_id", sa.Text(), nullable=False),
        sa.Column("account", sa.LargeBinary(), nullable=False),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("user_id", "device_id", name="uq_accounts_user_device"),
        schema=schema,
    )
    op.create_table(
        "olmsessions",
        sa.Column("session_id", sa.Text(), primary_key=True),
        _account(schema),
        sa.Column("sender_key", sa.Text(), nullable=False),
        sa.Column("session", sa.LargeBinary(), nullable=False),
        sa.Column("creation_time", sa.DateTime(), nullable=False),
        sa.Column("last_usage_date", sa.DateTime(), nullable=False),
        schema=schema,
    )
    op.create_table(
        "megolminboundsessions",
        sa.Column("session_id", sa.Text(), primary_key=True),
        _account(schema),
        sa.Column("sender_key", sa.Text(), nullable=False),
        sa.Column("fp_key", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("session", sa.LargeBinary(), nullable=False),
        schema=schema,
    )
    op.create_table(
        "forwardedchains",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "session_id",
            sa.Text(),
            sa.ForeignKey(f"{schema}.megolminboundsessions.session_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("sender_key", sa.Text(), nullable=False),
        # session_id first: the load joins on it.
        sa.UniqueConstraint("session_id", "sender_key", name="uq_forwardedchains_link"),
        schema=schema,
    )
    op.create_table(
        "devicekeys",
        sa.Column("id", sa.Integer(), primary_key=True),
        _account(schema),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("device_id", sa.Text(), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False, server_default=""),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("account_id", "user_id", "device_id", name="uq_devicekeys_device"),
        schema=schema,
    )
    op.create_table(
        "keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "device_id",
            sa.Integer(),
            sa.ForeignKey(f"{schema}.devicekeys.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("key_type", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.UniqueConstraint("device_id", "key_type", name="uq_keys_device_type"),
        schema=schema,
    )
    op.create_table(
        "devicetruststate",
        sa.Column(
            "device_id",
            sa.Integer(),
            sa.ForeignKey(f"{schema}.devicekeys.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("state", sa.Integer(), nullable=False),
        schema=schema,
    )
    op.create_table(
        "encryptedrooms",
        sa.Column("id", sa.Integer(), primary_key=True),
        _account(schema),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.UniqueConstraint("account_id", "room_id", name="uq_encryptedrooms_room"),
        schema=schema,
    )
    op.create_table(
        "outgoingkeyrequests",
        sa.Column("id", sa.Integer(), primary_key=True),
        _account(schema),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.Column("algorithm", sa.Text(), nullable=False),
        sa.UniqueConstraint("account_id", "request_id", name="uq_outgoingkeyrequests_request"),
        schema=schema,
    )
    op.create_table(
        "synctokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        _account(schema),
        sa.Column("token", sa.Text(), nullable=False),
        sa.UniqueConstraint("account_id", name="uq_synctokens_account"),
        schema=schema,
    )
    op.execute(
        sa.text(f"INSERT INTO {quoted}.storeversion (version) VALUES (:v)").bindparams(
            v=STORE_VERSION
        )
    )
    # Revision 0013's fence (before each statement and at commit), the function in the
    # bot's own schema.
    bot_schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar()
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER liaison_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE "
            f"ON {quoted}.{table} FOR EACH STATEMENT EXECUTE FUNCTION {bot_schema}.liaison_fence()"
        )
        op.execute(
            f"CREATE CONSTRAINT TRIGGER liaison_fence_commit AFTER INSERT OR UPDATE OR DELETE "
            f"ON {quoted}.{table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
            f"EXECUTE FUNCTION {bot_schema}.liaison_fence()"
        )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    quoted = bind.dialect.identifier_preparer.quote_schema(_schema())
    op.execute(f"DROP SCHEMA IF EXISTS {quoted} CASCADE")
