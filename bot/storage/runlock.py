"""One `liaison-bot run` per store: two processes on one database and crypto store would
both sync, both send (every relay twice) and both write the crypto store, whose sessions
then no longer match what the homeserver holds.

A single process (no `[ha]`) holds a lock for its whole life, taken before it touches the
store; a second one is refused, naming the first. The lock goes with the process however it
ends (even killed), so there is nothing stale to clean up:
- SQLite: an OS lock (`flock`) on `<database>.lock` beside the database file; the lock
  file also names the holder's pid (for the message only: the lock is the flock).
- PostgreSQL: a session advisory lock, keyed by the schema, on a connection of its own kept
  open; the server drops it when that session ends.

A high-availability pair does not take it: its lease decides who acts (bot/ha.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import socket
import stat
from pathlib import Path

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from bot.storage.models import NOT_A_NODE, make_engine

# pg_try_advisory_lock(int4, int4): the first number says "liaison-bot run lock" ("lrun"),
# the second is derived from the schema, so bots in other schemas of one database coexist.
_PG_CLASS = 0x6C72756E


class StoreBusy(Exception):
    """Another process holds the store; the message names it."""


class LockFileUnusable(StoreBusy):
    """The lock file cannot be used as it is (a symlink, not a file, no permission): the
    store cannot be held, so it is treated as busy; the message says what to fix."""


class RunLock:
    """The held lock; `release` (or the process's end) lets the next one in."""

    def __init__(self, file: int | None = None, connection: Connection | None = None) -> None:
        self._file = file
        self._connection = connection

    def release(self) -> None:
        if self._file is not None:
            os.close(self._file)  # closing the descriptor drops the flock
            self._file = None
        if self._connection is not None:
            with contextlib.suppress(Exception):  # the server drops it with the session anyway
                self._connection.close()
                self._connection.engine.dispose()
            self._connection = None


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def hold_run_lock(url: str) -> RunLock:
    """Take the store's run lock or raise StoreBusy. `url` is the resolved database URL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            return RunLock()  # a private in-memory database: nothing to share
        return _flock(Path(parsed.database), url)
    return _advisory(url)


def _flock(database: Path, url: str) -> RunLock:
    path = database.with_name(database.name + ".lock")
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    for folder in reversed(missing):  # private, as the database's own (bot/storage/migrate.py)
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)
    # Never through a symlink (one planted there would have the bot truncate and write a
    # file of someone else's choosing), and not blocking on a FIFO planted in its place.
    try:
        fd = os.open(
            path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600
        )
    except OSError as exc:
        raise LockFileUnusable(
            f"cannot take the run lock of {safe_url(url)}: lock file {path}: {exc.strerror}"
            + (" (a symbolic link: remove it)" if exc.errno == errno.ELOOP else "")
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LockFileUnusable(
            f"cannot take the run lock of {safe_url(url)}: lock file {path} is not a regular "
            "file: remove it"
        )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StoreBusy(
            f"another liaison-bot is running on {safe_url(url)} (lock held by pid {holder}, "
            f"lock file {path})"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return RunLock(file=fd)


def _advisory(url: str) -> RunLock:
    name = f"liaison-bot/{socket.gethostname()}/pid {os.getpid()}"[:63]
    engine = make_engine(url, connect_params=lambda: {**NOT_A_NODE, "application_name": name})
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        schema = str(conn.execute(text("SELECT current_schema()")).scalar_one())
        key = int.from_bytes(hashlib.sha256(schema.encode()).digest()[:4], "big") & 0x7FFFFFFF
        taken = conn.execute(
            text("SELECT pg_try_advisory_lock(:cls, :key)"), {"cls": _PG_CLASS, "key": key}
        ).scalar_one()
        if taken:
            return RunLock(connection=conn)
        holder = conn.execute(
            text(
                "SELECT a.pid, a.application_name FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
                "AND l.classid = CAST(:cls AS oid) AND l.objid = CAST(:key AS oid) "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"cls": _PG_CLASS, "key": key},
        ).first()
    except BaseException:
        conn.close()
        engine.dispose()
        raise
    conn.close()
    engine.dispose()
    who = (
        f"server session pid {holder.pid} / application_name {holder.application_name!r}"
        if holder is not None
        else "a session this role cannot see"
    )
    raise StoreBusy(
        f"another liaison-bot is running on {safe_url(url)} (schema {schema}; lock held by {who})"
    )
