"""Storage: the SQLAlchemy 2 models and the small functions the rest of the bot calls.

One module owns every table and every query, so no SQL lives anywhere else (DESIGN §7).
The schema itself changes only through Alembic revisions in `migrations/`; a test checks
that these models and the migrations agree. Functions are synchronous and each runs one
transaction; the bot calls them from a worker thread so the event loop never blocks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so that Alembic batch migrations on SQLite can find them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
GENESIS_HASH = "0" * 64
# SQLite only auto-increments INTEGER primary keys; PostgreSQL gets a BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database: use UTC-aware datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ClearanceRow(Base):
    """A person's clearance record: nationality, expiry, revocation, pinned identity."""

    __tablename__ = "clearances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255), unique=True)
    nationality: Mapped[str] = mapped_column(String(3))
    expires: Mapped[date | None] = mapped_column(Date)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    identity_key: Mapped[str | None] = mapped_column(String(64))  # pinned master key
    identity_pinned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    grants: Mapped[list[GrantRow]] = relationship(
        back_populates="clearance", cascade="all, delete-orphan", lazy="selectin"
    )
    caveats: Mapped[list[ClearanceCaveatRow]] = relationship(
        back_populates="clearance", cascade="all, delete-orphan", lazy="selectin"
    )


class GrantRow(Base):
    """One grant: a level in one scheme (a clearance holds at most one per scheme)."""

    __tablename__ = "clearance_grants"
    __table_args__ = (UniqueConstraint("clearance_id", "scheme"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    clearance_id: Mapped[int] = mapped_column(
        ForeignKey("clearances.id", ondelete="CASCADE"), index=True
    )
    scheme: Mapped[str] = mapped_column(String(8))
    level: Mapped[str] = mapped_column(String(64))  # canonical banner, e.g. "DEU GEHEIM"
    rank: Mapped[int] = mapped_column(Integer)
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    clearance: Mapped[ClearanceRow] = relationship(back_populates="grants")


class ClearanceCaveatRow(Base):
    """A caveat briefing (ATOMAL, …) held by a clearance."""

    __tablename__ = "clearance_caveats"

    clearance_id: Mapped[int] = mapped_column(
        ForeignKey("clearances.id", ondelete="CASCADE"), primary_key=True
    )
    caveat: Mapped[str] = mapped_column(String(32), primary_key=True)

    clearance: Mapped[ClearanceRow] = relationship(back_populates="caveats")


class RoomRow(Base):
    """A managed room: configured or created from chat, with its label and audience."""

    __tablename__ = "rooms"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(32), unique=True)
    room_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    label: Mapped[str] = mapped_column(String(300))  # canonical banner
    scheme: Mapped[str] = mapped_column(String(8))
    rank: Mapped[int] = mapped_column(Integer)
    audience: Mapped[list[str]] = mapped_column(JSON)  # nation trigraphs, sorted
    origin: Mapped[str] = mapped_column(String(16), default="config")  # config | chat
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class AuditRow(Base):
    """One append-only audit entry, chained to the previous one by hash."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHeadRow(Base):
    """The newest entry's id and hash: deleting the newest row is detected too."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    last_id: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class SyncStateRow(Base):
    """The sync token, stored only after the events it covers were handled (DESIGN §7)."""

    __tablename__ = "sync_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    next_batch: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


# ---------------------------------------------------------------- engine


def make_engine(url: str) -> Engine:
    """An engine with the settings each backend needs for serialised, durable writes.

    SQLite: every transaction starts with BEGIN IMMEDIATE, so two writers (bot and CLI)
    queue on the write lock instead of failing on a lock upgrade; WAL lets readers go on.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" below issue BEGIN
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if parsed.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Store:
    """Small intent-named functions over one engine, each one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(make_engine(url))

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------ audit

    def append_audit(
        self,
        actor: str,
        action: str,
        subject: str | None = None,
        detail: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> AuditEntry:
        """Append one entry to the hash chain; concurrent writers are serialised by the
        lock on the head row (FOR UPDATE; on SQLite the BEGIN IMMEDIATE write lock)."""
        with self.session() as session:
            head = session.execute(
                select(AuditHeadRow).where(AuditHeadRow.id == 1).with_for_update()
            ).scalar_one_or_none()
            prev = head.hash if head else GENESIS_HASH
            row = AuditRow(
                at=(at or utcnow()).astimezone(UTC).replace(microsecond=0),
                actor=actor,
                action=action,
                subject=subject,
                detail=dict(detail or {}),
                prev_hash=prev,
                hash="",
            )
            session.add(row)
            session.flush()  # assigns the id that the hash covers
            row.hash = audit_hash(row)
            if head is None:
                session.add(AuditHeadRow(id=1, last_id=row.id, hash=row.hash))
            else:
                head.last_id, head.hash = row.id, row.hash
            return AuditEntry.of(row)

    def recent_audit(self, limit: int = 20) -> list[AuditEntry]:
        with self.session() as session:
            rows = session.scalars(select(AuditRow).order_by(AuditRow.id.desc()).limit(limit))
            return [AuditEntry.of(r) for r in rows]

    def verify_audit(self) -> AuditVerdict:
        """Walk the chain: each row's hash, each link, and the stored head."""
        with self.session() as session:
            prev = GENESIS_HASH
            last: AuditRow | None = None
            count = 0
            for row in session.scalars(select(AuditRow).order_by(AuditRow.id)):
                if row.prev_hash != prev:
                    return AuditVerdict(False, count, f"row {row.id}: chain broken before it")
                if audit_hash(row) != row.hash:
                    return AuditVerdict(False, count, f"row {row.id}: contents were modified")
                prev, last, count = row.hash, row, count + 1
            head = session.get(AuditHeadRow, 1)
            if last is None and (head is None or (head.last_id == 0 and head.hash == prev)):
                return AuditVerdict(True, 0, "empty log")
            if head is None or last is None or head.last_id != last.id or head.hash != prev:
                newest = last.id if last else "none"
                return AuditVerdict(
                    False,
                    count,
                    f"newest rows missing: head expects row "
                    f"{head.last_id if head else '?'}, log ends at row {newest}",
                )
            return AuditVerdict(True, count, f"{count} entries intact")

    # ------------------------------------------------------------ sync state

    def sync_token(self) -> str | None:
        with self.session() as session:
            row = session.get(SyncStateRow, 1)
            return row.next_batch if row else None

    def save_sync_token(self, token: str) -> None:
        with self.session() as session:
            row = session.get(SyncStateRow, 1)
            if row is None:
                session.add(SyncStateRow(id=1, next_batch=token))
            else:
                row.next_batch = token


def audit_hash(row: AuditRow) -> str:
    """SHA-256 over the previous hash and the entry's canonical JSON (id included, so a
    deleted middle row breaks the next link)."""
    body = json.dumps(
        {
            "id": row.id,
            "at": row.at.astimezone(UTC).isoformat(),
            "actor": row.actor,
            "action": row.action,
            "subject": row.subject,
            "detail": row.detail,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256((row.prev_hash + body).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    subject: str | None
    detail: dict[str, Any]

    @classmethod
    def of(cls, row: AuditRow) -> AuditEntry:
        return cls(row.id, row.at, row.actor, row.action, row.subject, dict(row.detail))


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    intact: bool
    entries: int
    message: str
