"""Schema migrations: Alembic, driven from our own CLI so users need no alembic.ini."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.engine import make_url

import migrations
from bot.storage import make_engine

SCRIPT_LOCATION = str(Path(migrations.__file__).resolve().parent)


def alembic_config(url: str, connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def ensure_sqlite_folder(url: str) -> None:
    """Make a SQLite database's folder if it is missing: each folder made is private to
    its owner (0700, whatever the umask). An existing folder is left as it is (it may be the
    config's folder, shared with other files); the database file itself is always 0600
    (`make_engine`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    folder = Path(parsed.database).absolute().parent
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)
        path.chmod(0o700)  # mkdir's mode is masked by the umask


def upgrade(url: str, revision: str = "head") -> str | None:
    """Bring the database to `revision`; returns the revision it is at afterwards."""
    ensure_sqlite_folder(url)
    command.upgrade(alembic_config(url), revision)
    return current_revision(url)


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory(SCRIPT_LOCATION).get_current_head()


def revision_of(connection: Connection) -> str | None:
    """The revision the database on `connection` is at; None when it has no version table
    (an empty database, or not ours). Only reads: safe on a read-only connection."""
    return MigrationContext.configure(connection).get_current_revision()


def is_known_revision(revision: str) -> bool:
    """Whether this liaison-bot's migrations name `revision` (False: a newer one wrote it)."""
    from alembic.util.exc import CommandError

    try:
        return ScriptDirectory(SCRIPT_LOCATION).get_revision(revision) is not None
    except CommandError:
        return False
