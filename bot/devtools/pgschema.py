"""A throwaway PostgreSQL schema for tests and benchmarks: a new, empty schema on a server,
named by the search_path of the URL handed out, dropped afterwards with the crypto store's
schema that migrating it makes beside it (revision 0014).

Tooling (bot/devtools): never imported by the running bot.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bot.matrix.dbstore import crypto_schema


@contextmanager
def throwaway_schema(base_url: str, prefix: str) -> Iterator[str]:
    """`base_url` with its search_path set to a new schema `<prefix>_<random>`."""
    schema = f"{prefix}_{secrets.token_hex(6)}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
        try:
            yield url.render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{crypto_schema(schema)}" CASCADE'))
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()
