"""The tables, as SQLAlchemy 2 typed models, and the engine each backend needs.

The schema changes only through Alembic revisions in `migrations/`; a test checks that
these models and the migrations agree."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
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
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    mapped_column,
    relationship,
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
    # A master key seen that differs from the pinned one: key sharing stops until confirmed.
    identity_pending: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Ed25519 over the record with its grants and caveats (records.clearance_payload), by
    # the key derived from the data key; a row that does not verify grants nothing.
    signature: Mapped[str | None] = mapped_column(String(100))

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
    # homeservers members may come from, sorted; NULL: stored before federation (any)
    servers: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    origin: Mapped[str] = mapped_column(String(16), default="config")  # config | chat
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Ed25519 over the record (records.room_payload); a row that does not verify is no
    # managed room, for the bot and the gate.
    signature: Mapped[str | None] = mapped_column(String(100))


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
    # Rows from this id on are HMAC'd with a key derived from the data key; the seal (an
    # HMAC of that id and of the newest row's id and hash) stops anyone without the key
    # from moving the boundary, or the head back over deleted newest rows.
    keyed_from: Mapped[int | None] = mapped_column(BigInteger)
    key_seal: Mapped[str | None] = mapped_column(String(64))


class RoomSnapshotRow(Base):
    """What the bot knew of one joined room (members, encryption) as of the stored sync
    token, sealed and bound to the room: a restart restores it and syncs on from the token
    instead of asking for every room's full state (1 000 rooms: seconds, not tens)."""

    __tablename__ = "room_snapshots"

    room_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    sealed: Mapped[str] = mapped_column(Text)


class SyncStateRow(Base):
    """The sync token, stored only after the events it covers were handled."""

    __tablename__ = "sync_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    next_batch: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class BotSessionRow(Base):
    """The bot's one device for life: logged in once, reused on every start."""

    __tablename__ = "bot_session"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    user_id: Mapped[str] = mapped_column(String(255))
    device_id: Mapped[str] = mapped_column(String(64))
    access_token: Mapped[str] = mapped_column(Text)  # sealed with the pickle key
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class HandledEventRow(Base):
    """Events already acted on, so a replay after a crash never runs a command twice."""

    __tablename__ = "handled_events"

    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    room_id: Mapped[str] = mapped_column(String(255))
    handled_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class CiphertextRow(Base):
    """Which encrypted message each acted-on event was: (sender key, megolm session, message
    index) -> event id. Kept for good (a row is small): the same ciphertext sent again under
    a new event id, after a restart emptied nio's in-memory replay cache, is a replay."""

    __tablename__ = "acted_ciphertexts"

    ciphertext: Mapped[str] = mapped_column(String(255), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255))
    acted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DirectRoomRow(Base):
    """The encrypted direct-message room the bot shares with one person."""

    __tablename__ = "direct_rooms"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    room_id: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CrossSigningRow(Base):
    """The bot's own cross-signing keys, sealed with a key derived from the pickle key."""

    __tablename__ = "cross_signing"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    user_id: Mapped[str] = mapped_column(String(255))
    master_key: Mapped[str] = mapped_column(String(64))  # public, for checks and display
    sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PendingEventRow(Base):
    """An event the bot could not decrypt yet: kept (so the sync token may move on) until
    its key arrives or the grace period ends and the sender is told."""

    __tablename__ = "pending_events"

    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    room_id: Mapped[str] = mapped_column(String(255))
    sender: Mapped[str] = mapped_column(String(255))
    event: Mapped[dict[str, Any]] = mapped_column(JSON)  # the encrypted event as received
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    outcome: Mapped[str | None] = mapped_column(String(32))  # decrypted | reported


class IntelItemRow(Base):
    """A tagged message as stored for digests and search; its text sealed."""

    __tablename__ = "intel_items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(255), unique=True)  # the source event
    room_key: Mapped[str] = mapped_column(String(32), index=True)
    room_id: Mapped[str] = mapped_column(String(255))
    sender: Mapped[str] = mapped_column(String(255))
    label: Mapped[str] = mapped_column(String(300))  # the originator's banner, never rewritten
    scheme: Mapped[str] = mapped_column(String(8))
    rank: Mapped[int] = mapped_column(Integer)
    precedence: Mapped[int] = mapped_column(Integer)
    exercise: Mapped[bool] = mapped_column(Boolean, default=False)
    topics: Mapped[list[str]] = mapped_column(JSON)
    text: Mapped[str] = mapped_column(Text)  # sealed
    origin: Mapped[str] = mapped_column(String(64), default="chat")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    redacted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RelayRow(Base):
    """The relay ledger: one row per (source event, target room, kind), written before the
    send with a fixed transaction id, so a replay re-sends and the homeserver de-duplicates."""

    __tablename__ = "relays"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    txn_id: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # copy | edit | redact
    source_event_id: Mapped[str] = mapped_column(String(255), index=True)
    item_event_id: Mapped[str] = mapped_column(String(255), index=True)  # the item's event
    target_key: Mapped[str] = mapped_column(String(32))
    target_room_id: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    content: Mapped[str] = mapped_column(Text)  # sealed event content
    target_event_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReleaseRequestRow(Base):
    """A tagged message held for national release (four eyes): a route asked for a second
    officer's approval. One per item; its targets (ReleaseTargetRow) are decided one by one.
    The label is the item's banner, in clear like intel_items.label; the would-be copies
    are sealed in the targets."""

    __tablename__ = "release_requests"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)  # R{id}
    item_event_id: Mapped[str] = mapped_column(String(255), unique=True)
    source_key: Mapped[str] = mapped_column(String(32))
    source_room_id: Mapped[str] = mapped_column(String(255))
    sender: Mapped[str] = mapped_column(String(255))
    sender_device: Mapped[str | None] = mapped_column(String(255))
    label: Mapped[str] = mapped_column(String(300))
    scheme: Mapped[str] = mapped_column(String(8))
    rank: Mapped[int] = mapped_column(Integer)
    held_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # the bot's notice of the hold, which approvers react to
    notice_event_id: Mapped[str | None] = mapped_column(String(255), index=True)

    targets: Mapped[list[ReleaseTargetRow]] = relationship(
        back_populates="request",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="ReleaseTargetRow.id",
    )


class ReleaseTargetRow(Base):
    """One target room of a held item and its decision: held, then approved (its copy
    handed to the relay ledger in the same transaction), denied, expired or withdrawn."""

    __tablename__ = "release_targets"
    __table_args__ = (UniqueConstraint("request_id", "target_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("release_requests.id", ondelete="CASCADE"), index=True
    )
    target_key: Mapped[str] = mapped_column(String(32))
    target_room_id: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), index=True)  # records.HoldState
    content: Mapped[str] = mapped_column(Text)  # sealed would-be copy (sealing.hold_sealer)
    decided_by: Mapped[str | None] = mapped_column(String(255))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)  # sealed (sealing.reason_sealer)

    # many-to-one, joined: `keys rotate` reads the item's event id with every target
    request: Mapped[ReleaseRequestRow] = relationship(back_populates="targets", lazy="joined")


class DigestScheduleRow(Base):
    """A digest schedule made from chat (config schedules live in the config, as cfg-N)."""

    __tablename__ = "digest_schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    room_key: Mapped[str] = mapped_column(String(32))
    cron: Mapped[str] = mapped_column(String(100))
    window_s: Mapped[int] = mapped_column(Integer)
    sources: Mapped[list[str]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DigestRunRow(Base):
    """One window of one schedule, recorded before posting: a window is posted at most once.

    The events to post are stored with the claim (sealed, each with its fixed transaction id),
    so a run a crash left in `posting` is re-driven with exactly what was claimed, and the
    homeserver de-duplicates a part that had gone out; they are cleared once posted."""

    __tablename__ = "digest_runs"
    __table_args__ = (UniqueConstraint("schedule_key", "window_end"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_key: Mapped[str] = mapped_column(String(32))
    room_key: Mapped[str] = mapped_column(String(32))
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(16))  # posting | posted | skipped | stale
    delayed: Mapped[bool] = mapped_column(Boolean, default=False)
    event_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # sealed {"room_id", "parts": [{"txn_id", "content"}]} while posting; NULL after (or for
    # runs claimed before 0011)
    parts: Mapped[str | None] = mapped_column(Text, nullable=True)


class RouteRow(Base):
    """A relay route made from chat (`!route add`), beside the configured ones."""

    __tablename__ = "routes"
    __table_args__ = (UniqueConstraint("source_key", "target_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_key: Mapped[str] = mapped_column(String(32))
    target_key: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class HaLeaderRow(Base):
    """Who may act for the bot when two or more processes share the database: one row.

    The epoch is the fencing token: it grows by one at each takeover, every write of the
    active carries it (PostgreSQL trigger `liaison_fence`, migration 0013), so a process
    that lost the lease is refused even if it never noticed. The lease is timed on the
    database's clock (`lease_until`), never a host's."""

    __tablename__ = "ha_leader"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    epoch: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str] = mapped_column(String(100))
    lease_until: Mapped[datetime] = mapped_column(UTCDateTime)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SiemCursorRow(Base):
    """How far the audit log has been delivered to the SIEM (bot/siem/exporter.py): one
    row. The audit log is the outbox; this names the last row the SIEM confirmed (its id
    and hash: the next batch must link to it), moved only after a confirmed batch. It also
    keeps the outage in progress, so a restart neither audits it twice nor forgets it, and
    the installation id every exported event carries (a random uuid, made once)."""

    __tablename__ = "siem_cursor"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    installation: Mapped[str] = mapped_column(String(36))
    # NULL until the exporter first runs ([siem] start says where it begins then)
    last_id: Mapped[int | None] = mapped_column(BigInteger)
    last_hash: Mapped[str | None] = mapped_column(String(64))
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # since the last confirmed batch
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)


class GateSettingsRow(Base):
    """What the homeserver gate needs of the bot's config, published by the running bot
    (bot/storage/gate_settings.py), one row per bot: its admins, admin room and extra
    caveats, and the version and schema revision it runs. Signed with the register key
    like clearance and room rows, so a database writer cannot make someone an admin."""

    __tablename__ = "gate_settings"

    bot_user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    admins: Mapped[list[str]] = mapped_column(JSON)  # sorted
    admin_room: Mapped[str | None] = mapped_column(String(32))  # a room key
    caveats: Mapped[list[str]] = mapped_column(JSON)  # sorted
    bot_version: Mapped[str] = mapped_column(String(64))
    schema_revision: Mapped[str] = mapped_column(String(32))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime)
    signature: Mapped[str | None] = mapped_column(Text)


# ---------------------------------------------------------------- engine


NOT_A_NODE = {"options": "-c liaison.epoch="}


def with_options(current: Mapping[str, Any], extra: Mapping[str, str]) -> dict[str, str]:
    """libpq parameters `extra` on top of `current`, their `options` (`-c name=value` ...)
    added to the URL's own rather than replacing them (a URL may set its search_path)."""
    merged = dict(extra)
    if "options" in extra and current.get("options"):
        merged["options"] = f"{current['options']} {extra['options']}"
    return merged


def make_engine(url: str, connect_params: Callable[[], Mapping[str, str]] | None = None) -> Engine:
    """An engine with the settings each backend needs for serialised, durable writes.

    `connect_params` (PostgreSQL) are asked for at every new connection and added to its
    libpq parameters: a node of a high-availability pair names itself and its epoch there
    (`application_name`, `options=-c liaison.epoch=N`), so that the fence trigger can
    refuse a stale node's writes and a new active can end the old one's sessions.

    SQLite: every transaction starts with BEGIN IMMEDIATE, so two writers (bot and CLI)
    queue on the write lock instead of failing on a lock upgrade; WAL lets readers go on.
    The database file is private to its owner (0600, whatever the umask): created so
    before SQLite opens it, and an existing file and its -wal/-shm/-journal tightened on
    every connect. SQLite gives the files it makes beside it the database file's mode.
    """
    import logging
    import os

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        server = create_engine(url, pool_pre_ping=True)
        # Not a node of a pair: say so (an empty epoch), so that a site that makes the fence
        # refuse sessions that say nothing (README "High availability") still lets this in.
        ask = connect_params or NOT_A_NODE.copy

        @event.listens_for(server, "do_connect")
        def _identify(_d: Any, _r: Any, _a: Any, cparams: dict[str, Any]) -> None:
            cparams.update(with_options(cparams, ask()))

        return server
    if connect_params is not None:
        raise ValueError("connection parameters are for PostgreSQL (high availability) only")
    engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})
    path = parsed.database
    if path not in (None, "", ":memory:") and not parsed.query.get("uri"):
        private = str(path)

        @event.listens_for(engine, "do_connect")
        def _private_file(*_: Any) -> None:
            try:
                os.close(os.open(private, os.O_RDONLY | os.O_CREAT, 0o600))
            except FileNotFoundError:
                return  # no such folder: SQLite says so in its own words
            for name in (private, *(private + end for end in ("-wal", "-shm", "-journal"))):
                try:
                    os.chmod(name, 0o600)
                except FileNotFoundError:
                    pass
                except PermissionError as exc:
                    logging.getLogger(__name__).warning("cannot make %s private: %s", name, exc)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" below issue BEGIN
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if parsed.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL loses nothing when the bot process dies (the exactly-once
            # guarantee is against that); only a power cut can drop the newest commits.
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


# The newest Alembic revision (migrations/versions): a start checks it with one query and
# loads Alembic only when the database is behind. tests/test_storage.py keeps it in step.
SCHEMA_HEAD = "0017"


def schema_is_current(url: str) -> bool:
    """Whether the database is at SCHEMA_HEAD (False when it cannot tell: no file yet, no
    version table, no connection), without importing Alembic."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if path in (None, "", ":memory:") or not os.path.exists(str(path)):
            return False
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:
        return False
    finally:
        engine.dispose()
    return version == SCHEMA_HEAD
