"""PostgreSQL for the tests: a fresh schema per use on the server named by
LIAISON_TEST_DATABASE_URL, or a visible skip when there is none."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bot.devtools.pgschema import throwaway_schema

PG_ENV = "LIAISON_TEST_DATABASE_URL"


def _reason() -> str | None:
    url = os.environ.get(PG_ENV)
    if not url:
        return (
            f"PostgreSQL variant skipped: set {PG_ENV} "
            "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        )
    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:
        shown = make_url(url).render_as_string()
        return f"PostgreSQL variant skipped: no server at {shown}: {type(exc).__name__}"
    return None


SKIP_REASON = _reason()


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A database URL whose search_path is a new, empty schema; dropped afterwards, with
    the crypto store's schema that migrating it makes beside it (revision 0014)."""
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    with throwaway_schema(os.environ[PG_ENV], "t") as url:
        yield url
