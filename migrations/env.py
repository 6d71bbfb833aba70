"""Alembic environment: runs the revisions in `versions/` against the bot's engine.

Called through `liaison-bot db upgrade` (bot.migrate), which puts the database URL into the
Alembic config; a caller may also hand in an open connection (tests do).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from bot.storage import Base, make_engine

config = context.config
target_metadata = Base.metadata
MIGRATE_LOCK = 0x6C6961697300  # "liais": one advisory lock key for schema upgrades


def _configure(connection: object) -> None:
    # include_schemas stays off: autogenerate and compare_metadata look at the bot's own
    # schema only, so the crypto store's (revision 0014: nio's tables, made by hand, not
    # models) is never taken for tables to drop.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        compare_type=True,
    )


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                if conn.dialect.name == "postgresql":
                    # Nodes of a pair start together: one migrates, the other waits here
                    # and then finds nothing to do (PostgreSQL's DDL is transactional).
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATE_LOCK})
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
