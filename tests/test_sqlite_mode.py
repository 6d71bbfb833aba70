"""The SQLite database is private to its owner (issue 14, finding 13): the folder the bot
makes for it is 0700, the file and its -wal/-shm are 0600, whatever the umask."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.storage import make_engine
from bot.storage.migrate import ensure_sqlite_folder, upgrade


@pytest.fixture(autouse=True)
def lax_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default: 0644 files, 0755 folders
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def database_files(db: Path) -> list[Path]:
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]


def test_upgrade_makes_a_private_folder_and_database(tmp_path: Path) -> None:
    db = tmp_path / "data" / "deep" / "liaison.db"
    upgrade(f"sqlite:///{db}")
    assert mode(tmp_path / "data") == 0o700 and mode(db.parent) == 0o700
    engine = make_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:  # open: the -wal and -shm files exist
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.commit()
            files = database_files(db)
            assert len(files) == 3
            assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    finally:
        engine.dispose()


def test_an_existing_database_is_made_private_when_opened(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    old = sqlite3.connect(db)  # as an earlier version left it: 0644, with -wal and -shm
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE t (x INTEGER)")
    old.execute("INSERT INTO t VALUES (1)")
    old.commit()
    try:
        assert [mode(p) for p in database_files(db)] == [0o644] * 3
        engine = make_engine(f"sqlite:///{db}")
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT x FROM t")).scalar() == 1
            assert [mode(p) for p in database_files(db)] == [0o600] * 3
        finally:
            engine.dispose()
    finally:
        old.close()


def test_an_existing_folder_is_left_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    ensure_sqlite_folder(f"sqlite:///{shared / 'liaison.db'}")
    assert mode(shared) == 0o755
    assert list(shared.iterdir()) == []  # the folder only: the file is make_engine's
    # Nothing is made for a database that is not a SQLite file, even one whose name reads
    # as a relative path (it would land in the working directory).
    monkeypatch.chdir(shared)
    ensure_sqlite_folder("sqlite://")  # in memory
    ensure_sqlite_folder("sqlite:///:memory:")
    ensure_sqlite_folder("postgresql+psycopg://u@localhost/made/db")
    assert list(shared.iterdir()) == []
    ensure_sqlite_folder("sqlite:///made/liaison.db")  # the same name, a SQLite file: made
    assert [(p.name, mode(p)) for p in shared.iterdir()] == [("made", 0o700)]
