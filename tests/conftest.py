"""Shared fixtures: databases (SQLite always, PostgreSQL where a server is reachable)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

pytest_plugins = ["tests.matrix_harness", "tests.bot_harness"]

PG_ENV = "LIAISON_TEST_DATABASE_URL"


def _postgres_base() -> str | None:
    return os.environ.get(PG_ENV) or None


def _postgres_reason() -> str | None:
    """None when a PostgreSQL server answers, else why the variant is skipped."""
    url = _postgres_base()
    if url is None:
        return f"PostgreSQL variant skipped: set {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL variant skipped: no server at {make_url(url).render_as_string()}: {type(exc).__name__}"
    return None


_PG_REASON = _postgres_reason()


def pytest_report_header(config: pytest.Config) -> str:
    return _PG_REASON or f"PostgreSQL variant: {_postgres_base()}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh schema on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'liaison.db'}"
        return
    if _PG_REASON is not None:
        pytest.skip(_PG_REASON)
    base = _postgres_base()
    assert base is not None
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def pytest_configure(config: pytest.Config) -> None:
    # nio logs every undecryptable event of every test client at WARNING: keep failures
    # readable; the bot's own log lines stay.
    import logging

    for name in ("nio.crypto", "nio.crypto.log", "nio.responses", "nio.rooms", "peewee"):
        logging.getLogger(name).setLevel(logging.ERROR)
