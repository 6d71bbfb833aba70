"""Key rotation, the crypto store's side: nio's pickles (the Olm account, the Olm sessions,
the Megolm inbound sessions) opened with the old pickle key and pickled again with the new
one, in batches, resumable (`liaison-bot keys rotate --pickle`).

Here because only bot/matrix may touch vodozemac. Both kinds of crypto store hold the same
three tables (nio's layout, version 2): the SQLite file(s) of the folder store, and the
schema of the database store (`crypto_schema`). As in bot/storage/rotate.py, a pickle is
tried with the new key first: a batch committed before a cut-off is not touched again, and
every pickle opens with one of the two keys at every moment. nio keeps no outbound Megolm
session in its store (it makes a new one for each room after a start), so there is none to
move.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vodozemac
from sqlalchemy import Engine, create_engine, text

from bot.config import Config
from bot.matrix.dbstore import crypto_schema
from bot.storage.models import make_engine
from bot.storage.rotate import BATCH, Progress, RotationError
from bot.storage.sealing import SealError

# nio's tables holding pickles: (table, its key column, the pickle column, what it holds).
PICKLED: tuple[tuple[str, str, str, str, Any], ...] = (
    ("accounts", "id", "account", "Olm accounts", vodozemac.Account),
    ("olmsessions", "session_id", "session", "Olm sessions", vodozemac.Session),
    (
        "megolminboundsessions",
        "session_id",
        "session",
        "Megolm inbound sessions",
        vodozemac.InboundGroupSession,
    ),
)


def _pickle_key(passphrase: str) -> bytes:
    """nio's derivation of vodozemac's 32-byte pickle key (nio.crypto.sessions)."""
    return hashlib.sha256(passphrase.encode()).digest()


def repickle(kind: Any, pickle: bytes | str, old: str, new: str) -> bytes | None:
    """The pickle under the new key; None if it already opens with the new key; SealError
    if it opens with neither (a libolm pickle of the old key, which nio upgrades at a load,
    is converted too)."""
    data = pickle.decode("ascii") if isinstance(pickle, bytes | bytearray | memoryview) else pickle
    try:
        kind.from_pickle(data, _pickle_key(new))
        return None
    except vodozemac.PickleException:
        pass
    try:
        obj = kind.from_pickle(data, _pickle_key(old))
    except vodozemac.PickleException:
        try:
            obj = kind.from_libolm_pickle(data, old.encode())
        except (vodozemac.LibolmPickleException, vodozemac.PickleException):
            raise SealError("a pickle opens with neither key") from None
    pickled: str = obj.pickle(_pickle_key(new))
    return pickled.encode("ascii")


@dataclass(frozen=True)
class CryptoStore:
    """One crypto store's database and the schema its tables are in (None: SQLite)."""

    name: str  # for messages: the file, or the schema
    engine: Engine
    schema: str | None

    def table(self, name: str) -> str:
        return f'"{self.schema}"."{name}"' if self.schema else f'"{name}"'


def crypto_stores(config: Config) -> list[CryptoStore]:
    """The crypto store(s) of this config: the database store's schema, or each nio SQLite
    file in the folder store (one per device the bot has had). None yet: an empty list."""
    if config.crypto_store_in_database:
        engine = make_engine(config.database_url())
        with engine.connect() as conn:
            schema = crypto_schema(str(conn.execute(text("SELECT current_schema()")).scalar()))
        return [CryptoStore(f"schema {schema}", engine, schema)]
    folder = Path(config.crypto_store_path())
    if not folder.is_dir():
        return []
    return [
        CryptoStore(str(path), create_engine(f"sqlite:///{path}"), None)
        for path in sorted(folder.glob("*.db"))
    ]


def _page(
    conn: Any, store: CryptoStore, table: str, key: str, column: str, after: Any, size: int
) -> list[Any]:
    """The next `size` (key, pickle) rows after the key `after`, in key order."""
    where = f"WHERE {key} > :after " if after is not None else ""
    query = f"SELECT {key}, {column} FROM {store.table(table)} {where}ORDER BY {key} LIMIT :size"
    return list(conn.execute(text(query), {"after": after, "size": size}).all())


def check_pickles(
    stores: list[CryptoStore], old: str, new: str, size: int = BATCH
) -> dict[str, int]:
    """Every pickle opens with the old or the new key (else RotationError, nothing
    changed); returns how many per kind are still under the old one."""
    waiting: dict[str, int] = {}
    for store in stores:
        for table, key, column, what, kind in PICKLED:
            after: Any = None
            while True:
                with store.engine.connect() as conn:
                    rows = _page(conn, store, table, key, column, after, size)
                if not rows:
                    break
                after = rows[-1][0]
                for row_key, pickle in rows:
                    try:
                        if repickle(kind, pickle, old, new) is not None:
                            waiting[what] = waiting.get(what, 0) + 1
                    except SealError:
                        raise RotationError(
                            f"{store.name}: {what} {row_key} opens with neither the current "
                            "pickle key nor the new one (a rotation to a different key cut "
                            "off? finish that one with its key). Nothing was changed."
                        ) from None
    return waiting


def repickle_stores(
    stores: list[CryptoStore], old: str, new: str, progress: Progress, size: int = BATCH
) -> dict[str, int]:
    """Pickle everything again under the new key, a transaction per batch, progress after
    each committed batch. Returns how many pickles per kind this run moved."""
    moved: dict[str, int] = {}
    for store in stores:
        for table, key, column, what, kind in PICKLED:
            with store.engine.connect() as conn:
                counted = conn.execute(text(f"SELECT count(*) FROM {store.table(table)}"))
                total = int(counted.scalar() or 0)
            done, after = 0, None
            while True:
                with store.engine.begin() as conn:  # one batch, one transaction
                    rows = _page(conn, store, table, key, column, after, size)
                    for row_key, pickle in rows:
                        try:
                            new_pickle = repickle(kind, pickle, old, new)
                        except SealError:
                            raise RotationError(
                                f"{store.name}: {what} {row_key} opens with neither key "
                                "(written during the rotation?); the batch was not changed"
                            ) from None
                        if new_pickle is not None:
                            update = (
                                f"UPDATE {store.table(table)} SET {column} = :p WHERE {key} = :k"
                            )
                            conn.execute(text(update), {"p": new_pickle, "k": row_key})
                            moved[what] = moved.get(what, 0) + 1
                if not rows:
                    break
                after = rows[-1][0]
                done += len(rows)
                progress(what, done, total)
    return moved


def close_stores(stores: list[CryptoStore]) -> None:
    for store in stores:
        store.engine.dispose()
