"""What the store hands out: frozen records, never live ORM rows (a row outlives its
session badly, and callers must not write through it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Row

from bot.storage.models import (
    AuditRow,
    ClearanceRow,
    DigestRunRow,
    IntelItemRow,
    RelayRow,
    RoomRow,
)
from policy import Precedence
from policy.ids import RoomId, RoomKey


class Origin(StrEnum):
    """Where a room, a route or a digest schedule was made."""

    CONFIG = "config"
    CHAT = "chat"


class RelayKind(StrEnum):
    COPY = "copy"  # the relayed copy of an item
    EDIT = "edit"  # a copy's replacement after the source was edited
    REDACT = "redact"  # a copy withdrawn


class RelayState(StrEnum):
    PENDING = "pending"  # written before the send; re-sent under the same txn id
    SENT = "sent"
    STALE = "stale"  # pending past the homeserver's txn id memory: never re-sent


class RunState(StrEnum):
    POSTING = "posting"  # claimed, before the send
    POSTED = "posted"
    SKIPPED = "skipped"  # missed by more than the catch-up grace


class PendingOutcome(StrEnum):
    DECRYPTED = "decrypted"
    UNDECRYPTABLE = "undecryptable"


@dataclass(frozen=True, slots=True)
class ScheduleKey:
    """A digest schedule's key: `cfg-N` (the config file's N-th) or `db-N` (made in chat,
    its row id). Parsed here only."""

    origin: Origin
    number: int

    def __str__(self) -> str:
        return f"{'cfg' if self.origin is Origin.CONFIG else 'db'}-{self.number}"

    @classmethod
    def parse(cls, text: str) -> ScheduleKey | None:
        prefix, _, number = text.partition("-")
        origin = {"cfg": Origin.CONFIG, "db": Origin.CHAT}.get(prefix)
        if origin is None or not (number.isascii() and number.isdigit()):
            return None
        if number != str(int(number)):
            return None
        return cls(origin, int(number))


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


class StoreError(Exception):
    """A request the register cannot carry out; the message says why, for the user."""


@dataclass(frozen=True, slots=True)
class BotSession:
    user_id: str
    device_id: str
    sealed_token: str


@dataclass(frozen=True, slots=True)
class GrantRecord:
    scheme: str
    level: str
    rank: int


@dataclass(frozen=True, slots=True)
class ClearanceRecord:
    user_id: str
    nationality: str
    grants: tuple[GrantRecord, ...]
    caveats: frozenset[str]
    expires: date | None
    revoked_at: datetime | None
    identity_key: str | None
    identity_pending: str | None = None

    @classmethod
    def of(cls, row: ClearanceRow) -> ClearanceRecord:
        return cls(
            user_id=row.user_id,
            nationality=row.nationality,
            grants=tuple(
                sorted(
                    (GrantRecord(g.scheme, g.level, g.rank) for g in row.grants),
                    key=lambda g: (-g.rank, g.scheme),
                )
            ),
            caveats=frozenset(c.caveat for c in row.caveats),
            expires=row.expires,
            revoked_at=row.revoked_at,
            identity_key=row.identity_key,
            identity_pending=row.identity_pending,
        )


@dataclass(frozen=True, slots=True)
class RoomRecord:
    key: RoomKey
    name: str
    label: str  # canonical banner
    scheme: str
    rank: int
    audience: tuple[str, ...]
    room_id: RoomId | None = None
    origin: Origin = Origin.CONFIG
    closed_at: datetime | None = None
    servers: tuple[str, ...] | None = None  # None: any homeserver (stored before federation)

    @classmethod
    def of(cls, row: RoomRow) -> RoomRecord:
        return cls(
            key=RoomKey(row.key),
            name=row.name,
            label=row.label,
            scheme=row.scheme,
            rank=row.rank,
            audience=tuple(sorted(row.audience or ())),
            room_id=RoomId(row.room_id) if row.room_id else None,
            origin=Origin(row.origin),
            closed_at=row.closed_at,
            servers=tuple(sorted(row.servers)) if row.servers is not None else None,
        )


@dataclass(frozen=True, slots=True)
class PendingEvent:
    event_id: str
    room_id: str
    sender: str
    event: dict[str, Any]
    received_at: datetime


@dataclass(frozen=True, slots=True)
class IntelItem:
    event_id: str
    room_key: str
    room_id: str
    sender: str
    label: str
    scheme: str
    rank: int
    precedence: Precedence
    exercise: bool
    topics: tuple[str, ...]
    text: str  # sealed
    created_at: datetime
    origin: str = "chat"
    redacted_at: datetime | None = None

    @classmethod
    def of(cls, row: IntelItemRow | Row[Any]) -> IntelItem:
        """From an ORM row, or a Core row selecting the same columns by name."""
        return cls(
            row.event_id,
            row.room_key,
            row.room_id,
            row.sender,
            row.label,
            row.scheme,
            row.rank,
            _precedence(row.precedence),
            row.exercise,
            tuple(row.topics or ()),
            row.text,
            row.created_at,
            row.origin,
            row.redacted_at,
        )


@dataclass(frozen=True, slots=True)
class RelayEntry:
    txn_id: str
    kind: RelayKind
    source_event_id: str
    item_event_id: str
    target_key: str
    target_room_id: str
    content: str  # sealed
    state: RelayState = RelayState.PENDING
    target_event_id: str | None = None
    created_at: datetime | None = None

    @classmethod
    def of(cls, row: RelayRow) -> RelayEntry:
        return cls(
            row.txn_id,
            RelayKind(row.kind),
            row.source_event_id,
            row.item_event_id,
            row.target_key,
            row.target_room_id,
            row.content,
            RelayState(row.state),
            row.target_event_id,
            row.created_at,
        )


@dataclass(frozen=True, slots=True)
class AuditNote:
    """An audit entry to write in the same transaction as a change."""

    actor: str
    action: str
    subject: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DigestSchedule:
    key: str  # cfg-N (config) or db-N (chat)
    room_key: str
    cron: str
    window_s: int
    sources: tuple[str, ...]
    origin: Origin


@dataclass(frozen=True, slots=True)
class DigestRun:
    schedule_key: str
    window_end: datetime
    state: RunState
    delayed: bool
    event_id: str | None

    @classmethod
    def of(cls, row: DigestRunRow) -> DigestRun:
        return cls(row.schedule_key, row.window_end, RunState(row.state), row.delayed, row.event_id)


_PRECEDENCES = {int(p): p for p in Precedence}


def _precedence(value: int) -> Precedence:
    """`Precedence(value)` without the enum call's cost (a search opens 100 000 items);
    a value out of range still raises ValueError, as the enum does."""
    found = _PRECEDENCES.get(value)
    return found if found is not None else Precedence(value)
