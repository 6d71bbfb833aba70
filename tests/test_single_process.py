"""One `liaison-bot run` per store (issue 28): a second process on the same database (and
so the same crypto store) is refused, naming the first, before it touches anything, and
starts once the first has stopped. SQLite holds an OS lock beside the database file,
PostgreSQL a session advisory lock keyed by the schema.

No homeserver is needed: the first process is held waiting for one (an address that refuses
connections), which it does after it has taken the lock and migrated the database."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

from bot.storage.runlock import StoreBusy, hold_run_lock
from tests.test_startup_wait import (
    DATA_KEY,
    PICKLE_KEY,
    bot_env,
    start_run,
    stop,
    wait_for,
)

WAITING = "unreachable (ConnectionRefused): retrying in"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, so nothing else takes it, but not
    listening): the homeserver that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def write_config(path: Path, database_url: str, port: int) -> None:
    path.write_text(
        textwrap.dedent(
            f"""
            [homeserver]
            url = "http://127.0.0.1:{port}"
            user_id = "@liaison:example.org"
            password_env = "LIAISON_TEST_PASSWORD"
            pickle_key_env = "LIAISON_TEST_PICKLE_KEY"

            [storage]
            database_url = "{database_url}"
            crypto_store = "crypto"
            data_key_env = "LIAISON_TEST_DATA_KEY"
            """
        )
    )


def env() -> dict[str, str]:
    return bot_env(
        LIAISON_TEST_PASSWORD="unused-password",
        LIAISON_TEST_PICKLE_KEY=PICKLE_KEY,
        LIAISON_TEST_DATA_KEY=DATA_KEY,
    )


def safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def test_a_second_run_on_one_store_is_refused_until_the_first_stops(
    tmp_path: Path, database_url: str, closed_port: int
) -> None:
    config = tmp_path / "config.toml"
    write_config(config, database_url, closed_port)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = start_run(config, env(), first_log)
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for(first_log, WAITING, first)  # it holds the store, and waits
        refused = subprocess.run(
            [sys.executable, "-m", "bot.cli", "run", "--config", str(config)],
            env=env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1, refused.stderr
        assert f"error: another liaison-bot is running on {safe(database_url)}" in refused.stderr
        held_by = re.search(r"\(.*lock held by (.*)\)", refused.stderr)
        assert held_by is not None and f"pid {first.pid}" in held_by[1], refused.stderr
        # refused before it touched the store: no migration, no homeserver
        assert "database at revision" not in refused.stderr
        assert "unreachable" not in refused.stderr
        assert stop(first) == 0
        second = start_run(config, env(), second_log)
        wait_for(second_log, WAITING, second)  # the store is free again
        assert stop(second) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()


def test_the_lock_is_refused_while_held_and_free_once_released(database_url: str) -> None:
    url = database_url
    held = hold_run_lock(url)
    try:
        with pytest.raises(StoreBusy) as info:
            hold_run_lock(url)
        assert str(info.value).startswith(f"another liaison-bot is running on {safe(url)}")
    finally:
        held.release()
    hold_run_lock(url).release()  # free again


def test_the_lock_is_per_schema(database_url: str, tmp_path: Path) -> None:
    """Another database (SQLite: another file; PostgreSQL: another schema) is another
    store: its bot runs beside this one."""
    if make_url(database_url).get_backend_name() == "sqlite":
        other = f"sqlite:///{tmp_path / 'other.db'}"
        held = hold_run_lock(database_url)
        try:
            hold_run_lock(other).release()
        finally:
            held.release()
        return
    from tests.pg import fresh_schema

    with fresh_schema() as other:
        held = hold_run_lock(database_url)
        try:
            hold_run_lock(other).release()
        finally:
            held.release()


def test_the_sqlite_lock_file_is_private_and_names_no_secret(tmp_path: Path) -> None:
    database = tmp_path / "data" / "liaison.db"
    held = hold_run_lock(f"sqlite:///{database}")
    try:
        lock = database.with_name("liaison.db.lock")
        assert lock.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
        assert lock.read_text().strip().isdigit()  # the holder's pid, nothing else
        assert not database.exists()  # the lock does not make the database
    finally:
        held.release()


def test_a_postgresql_lock_leaves_no_table(database_url: str) -> None:
    """The advisory lock is the server's, not a row: nothing to clean after a crash."""
    if make_url(database_url).get_backend_name() == "sqlite":
        pytest.skip("PostgreSQL only")
    hold_run_lock(database_url).release()
    engine = create_engine(database_url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_a_symlink_or_fifo_at_the_lock_file_is_refused_not_followed(tmp_path: Path) -> None:
    """Someone who can write in the database's folder plants a symlink (or a FIFO) where
    the lock file goes: the bot does not truncate and write the file it points at, nor
    hang; it refuses to start, saying what to remove."""
    import os

    database = tmp_path / "liaison.db"
    lock = tmp_path / "liaison.db.lock"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    lock.symlink_to(victim)
    with pytest.raises(StoreBusy, match="a symbolic link: remove it"):
        hold_run_lock(f"sqlite:///{database}")
    assert victim.read_text() == "precious\n"
    lock.unlink()
    os.mkfifo(lock, 0o600)
    with pytest.raises(StoreBusy, match="is not a regular file: remove it"):
        hold_run_lock(f"sqlite:///{database}")
    lock.unlink()
    hold_run_lock(f"sqlite:///{database}").release()
