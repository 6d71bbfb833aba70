"""Shared fixtures: databases (SQLite always, PostgreSQL where a server is reachable)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pg import PG_ENV, SKIP_REASON, fresh_schema

pytest_plugins = ["tests.matrix_harness", "tests.bot_harness"]


def pytest_report_header(config: pytest.Config) -> str:
    return SKIP_REASON or f"PostgreSQL variant: {os.environ[PG_ENV]}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh schema on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'liaison.db'}"
        return
    with fresh_schema() as url:
        yield url


def pytest_configure(config: pytest.Config) -> None:
    # nio logs every undecryptable event of every test client at WARNING: keep failures
    # readable; the bot's own log lines stay.
    import logging

    for name in ("nio.crypto", "nio.crypto.log", "nio.responses", "nio.rooms", "peewee"):
        logging.getLogger(name).setLevel(logging.ERROR)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Any]:
    """A migrated SQLite store of the test's own, closed afterwards."""
    from bot.storage import Store
    from bot.storage.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    opened = Store.from_url(url)
    yield opened
    opened.close()
