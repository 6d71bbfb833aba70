"""Read-only access to the clearance register, for readers outside the bot.

The homeserver gate (`bot.gate`) runs inside Synapse, as another process and often another
operating-system user, and must never be able to change what it enforces: it opens the
register through an engine that cannot write (SQLite in `mode=ro`, PostgreSQL sessions set
READ ONLY, on top of a role that only has SELECT), never creates a missing file, and gives
up on an unreachable server within seconds rather than holding one of Synapse's threads.

Given the register's public key (`RegisterVerifier`, from `store.register_public_key`),
it also refuses every clearance or room row whose signature does not verify, logging the
row by name: a database writer cannot grant a clearance or point a managed room's label at
another room. Without a key it reads rows as stored (the gate's config must name the key).
"""

from __future__ import annotations

import logging
import sqlite3
import urllib.parse
from typing import Any

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool

from bot.storage.models import ClearanceCaveatRow, ClearanceRow, GrantRow, RoomRow
from bot.storage.records import ClearanceRecord, GrantRecord, RegisterVerifier, RoomRecord

log = logging.getLogger(__name__)

# Seconds to wait for a server (PostgreSQL) or a lock (SQLite) before the read fails, and
# with it the join or invite it was for: Synapse's caller is waiting on it.
CONNECT_TIMEOUT = 3


def make_reader_engine(url: str) -> Engine:
    """An engine over the register that can only read.

    SQLite: opened as ``file:…?mode=ro`` (a missing file is an error, not a new empty
    register) with ``query_only`` on. PostgreSQL: every session READ ONLY, a short connect
    timeout. Other backends are refused: nothing else is tested.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = parsed.database
        if not path or path == ":memory:":
            raise ValueError(f"the register must be a SQLite file, not {url!r}")
        target = f"file:{urllib.parse.quote(path)}?mode=ro"

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(
                target, uri=True, timeout=CONNECT_TIMEOUT, check_same_thread=False
            )
            conn.execute("PRAGMA query_only=ON")
            return conn

        # Pooled: a read-only connection costs a file open and a pragma; reads in WAL mode
        # see each newly committed transaction anyway.
        return create_engine(
            "sqlite://", creator=connect, poolclass=QueuePool, pool_size=4, max_overflow=4
        )
    if backend == "postgresql":
        engine = create_engine(
            url,
            # Each read is one statement: autocommit spares a BEGIN and a ROLLBACK round
            # trip per read; the ping finds a connection the server dropped (a restart).
            isolation_level="AUTOCOMMIT",
            pool_pre_ping=True,
            pool_size=2,
            max_overflow=4,
            connect_args={"connect_timeout": CONNECT_TIMEOUT},
        )

        @event.listens_for(engine, "connect")
        def _read_only(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            # A hung server fails the read (and so the join) instead of holding a thread.
            cursor.execute(f"SET statement_timeout = {CONNECT_TIMEOUT * 1000}")
            cursor.close()
            dbapi_conn.commit()

        return engine
    raise ValueError(f"unsupported register database {backend!r}: use sqlite or postgresql")


class RegisterReader:
    """The two questions the gate asks of the register, each one read-only query.

    Core selects, not the ORM: a clearance with its grants and caveats comes back in one
    round trip (the ORM's relationship loading took three), which is most of what an invite
    waits for when the answer is not cached.
    """

    def __init__(self, engine: Engine, verifier: RegisterVerifier | None = None) -> None:
        self.engine = engine
        self.verifier = verifier  # None: rows are not verified (no key configured)

    @classmethod
    def from_url(cls, url: str, register_key: str | None = None) -> RegisterReader:
        """`register_key`: the register's public key, as `store.register_public_key`
        gives it (`ed25519:…`)."""
        verifier = RegisterVerifier.from_text(register_key) if register_key else None
        return cls(make_reader_engine(url), verifier)

    def clearance(self, user_id: str) -> ClearanceRecord | None:
        c, g, v = _CLEARANCES, _GRANTS, _CAVEATS
        query = (
            select(
                c.c.user_id,
                c.c.nationality,
                c.c.expires,
                c.c.revoked_at,
                c.c.identity_key,
                c.c.identity_pending,
                c.c.signature,
                g.c.scheme,
                g.c.level,
                g.c.rank,
                v.c.caveat,
            )
            .select_from(
                c.outerjoin(g, g.c.clearance_id == c.c.id).outerjoin(v, v.c.clearance_id == c.c.id)
            )
            .where(c.c.user_id == user_id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return None
        first = rows[0]
        grants = {(r.scheme, r.level, r.rank) for r in rows if r.scheme is not None}
        record = ClearanceRecord(
            user_id=first.user_id,
            nationality=first.nationality,
            grants=tuple(
                GrantRecord(scheme, level, rank)
                for scheme, level, rank in sorted(grants, key=lambda x: (-x[2], x[0]))
            ),
            caveats=frozenset(r.caveat for r in rows if r.caveat is not None),
            expires=first.expires,
            revoked_at=first.revoked_at,
            identity_key=first.identity_key,
            identity_pending=first.identity_pending,
        )
        if self.verifier is not None and not self.verifier.clearance_verifies(
            record, first.signature
        ):
            log.error("clearance row of %s does not verify: refused (not cleared)", user_id)
            return None
        return record

    def room_by_id(self, room_id: str) -> RoomRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_ROOMS).where(_ROOMS.c.room_id == room_id)).first()
        if row is None:
            return None
        record = RoomRecord.of(row)  # type: ignore[arg-type]  # a Core row of RoomRow's table: the same columns by name
        if self.verifier is not None and not self.verifier.room_verifies(record, row.signature):
            log.error("room row %s (%s) does not verify: refused (not managed)", row.key, room_id)
            return None
        return record

    def close(self) -> None:
        self.engine.dispose()


_CLEARANCES = ClearanceRow.__table__
_GRANTS = GrantRow.__table__
_CAVEATS = ClearanceCaveatRow.__table__
_ROOMS = RoomRow.__table__


__all__ = ["CONNECT_TIMEOUT", "RegisterReader", "make_reader_engine"]
