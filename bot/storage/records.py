"""What the store hands out: frozen records, never live ORM rows (a row outlives its
session badly, and callers must not write through it)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Row

from bot.storage.models import (
    AuditRow,
    ClearanceRow,
    DigestRunRow,
    IntelItemRow,
    RelayRow,
    ReleaseRequestRow,
    ReleaseTargetRow,
    RoomRow,
    SiemCursorRow,
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
    STALE = "stale"  # left posting past the homeserver's txn id memory: never re-sent


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
    """One row of the audit chain. `prev_hash` and `hash` are the row's links (None only
    for an entry made by hand, not read from the log): an export carries them so that its
    receiver can check the chain for gaps without the database."""

    id: int
    at: datetime
    actor: str
    action: str
    subject: str | None
    detail: dict[str, Any]
    prev_hash: str | None = None
    hash: str | None = None

    @classmethod
    def of(cls, row: AuditRow) -> AuditEntry:
        return cls(
            row.id,
            row.at,
            row.actor,
            row.action,
            row.subject,
            dict(row.detail),
            prev_hash=row.prev_hash,
            hash=row.hash,
        )


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


class HoldState(StrEnum):
    """Where one target of a held item stands (national release control)."""

    HELD = "held"  # waiting for a second officer
    APPROVED = "approved"  # released: its copy is in the relay ledger
    DENIED = "denied"
    EXPIRED = "expired"  # nobody decided in time
    WITHDRAWN = "withdrawn"  # the item was redacted, or an edit no longer goes there


@dataclass(frozen=True, slots=True)
class HeldTarget:
    target_key: str
    target_room_id: str
    state: HoldState
    content: str  # sealed would-be copy (sealing.hold_sealer, hold_binding)
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str | None = None  # sealed (sealing.reason_sealer, reason_binding)

    @classmethod
    def of(cls, row: ReleaseTargetRow) -> HeldTarget:
        return cls(
            row.target_key,
            row.target_room_id,
            HoldState(row.state),
            row.content,
            row.decided_by,
            row.decided_at,
            row.reason,
        )


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    """A tagged message held for a second officer's release, with its targets."""

    id: int
    item_event_id: str
    source_key: str
    source_room_id: str
    sender: str
    label: str  # the item's banner, in clear like IntelItem.label
    scheme: str
    rank: int
    held_at: datetime
    expires_at: datetime
    notice_event_id: str | None
    sender_device: str | None
    targets: tuple[HeldTarget, ...]

    @property
    def public_id(self) -> str:
        """The id people see and type (`R12`); `parse_release_id` reads it back."""
        return f"R{self.id}"

    @property
    def held_targets(self) -> tuple[HeldTarget, ...]:
        return tuple(t for t in self.targets if t.state is HoldState.HELD)

    @property
    def is_pending(self) -> bool:
        """Some target still waits for a decision."""
        return any(t.state is HoldState.HELD for t in self.targets)

    def target(self, target_key: str) -> HeldTarget | None:
        return next((t for t in self.targets if t.target_key == target_key), None)

    @classmethod
    def of(cls, row: ReleaseRequestRow) -> ReleaseRequest:
        return cls(
            row.id,
            row.item_event_id,
            row.source_key,
            row.source_room_id,
            row.sender,
            row.label,
            row.scheme,
            row.rank,
            row.held_at,
            row.expires_at,
            row.notice_event_id,
            row.sender_device,
            tuple(HeldTarget.of(t) for t in sorted(row.targets, key=lambda t: t.id)),
        )


def parse_release_id(text: str) -> int | None:
    """`R12` (or `r12`) -> 12; None for anything else (no sign, no leading zero)."""
    body = text.strip()
    if len(body) < 2 or body[0] not in "Rr":
        return None
    number = body[1:]
    if not (number.isascii() and number.isdigit()) or number != str(int(number)):
        return None
    return int(number)


@dataclass(frozen=True, slots=True)
class NewHold:
    """What `Store.hold_release` stores of a held item (its targets: NewHeldTarget)."""

    item_event_id: str
    source_key: str
    source_room_id: str
    sender: str
    label: str
    scheme: str
    rank: int
    held_at: datetime
    expires_at: datetime
    sender_device: str | None = None


@dataclass(frozen=True, slots=True)
class NewHeldTarget:
    target_key: str
    target_room_id: str
    content: str  # sealed by the caller (sealing.hold_sealer, hold_binding)


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
    room_key: str = ""
    parts: str | None = None  # sealed, while posting (see DigestRunRow)
    created_at: datetime | None = None

    @classmethod
    def of(cls, row: DigestRunRow) -> DigestRun:
        return cls(
            row.schedule_key,
            row.window_end,
            RunState(row.state),
            row.delayed,
            row.event_id,
            row.room_key,
            row.parts,
            row.created_at,
        )


@dataclass(frozen=True, slots=True)
class ChainedAudit:
    """An audit entry with its links in the hash chain: what the SIEM exporter sends, and
    the hash its cursor keeps (the next batch must link to it)."""

    entry: AuditEntry
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, row: AuditRow) -> ChainedAudit:
        return cls(AuditEntry.of(row), row.prev_hash, row.hash)


@dataclass(frozen=True, slots=True)
class SiemPosition:
    """A place in the audit log: the last row delivered (0 and the genesis hash: none)."""

    last_id: int
    last_hash: str


@dataclass(frozen=True, slots=True)
class SiemCursor:
    """How far the audit log has been delivered to the SIEM (SiemCursorRow)."""

    installation: str
    position: SiemPosition | None  # None: the exporter has not started yet
    confirmed_at: datetime | None
    failures: int  # failed attempts since the last confirmed batch
    failing_since: datetime | None  # the outage in progress began then
    last_error: str | None

    @classmethod
    def of(cls, row: SiemCursorRow) -> SiemCursor:
        position = None
        if row.last_id is not None and row.last_hash is not None:
            position = SiemPosition(row.last_id, row.last_hash)
        return cls(
            row.installation,
            position,
            row.confirmed_at,
            row.failures,
            row.failing_since,
            row.last_error,
        )


# ---------------------------------------------------------------- register integrity
#
# Clearance and room rows decide who may be in which room, and the bot and the homeserver
# gate act on them. A database writer who could change them would grant clearances or move a
# managed room's label onto another room. So each row carries an Ed25519 signature over the
# fields that decide access, by a key derived from the data key (through the audit key, its
# own HKDF purpose): the bot signs as it writes, and the bot and the gate refuse a row that
# does not verify, naming it. Ed25519 rather than an HMAC: the gate verifies with the
# public key only, so a secret given to the homeserver cannot sign a row.
#
# What it does not stop: a row put back to an earlier state the bot signed (a revocation
# undone by restoring the row as it was before it). The audit log records every change.


def _when(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def clearance_payload(record: ClearanceRecord) -> bytes:
    """What a clearance row's signature covers: every field that decides access or key
    sharing (grants, caveats, nationality, expiry, revocation, the pinned identity)."""
    body = {
        "row": "clearance",
        "user_id": record.user_id,
        "nationality": record.nationality,
        "grants": sorted([g.scheme, g.level, g.rank] for g in record.grants),
        "caveats": sorted(record.caveats),
        "expires": record.expires.isoformat() if record.expires is not None else None,
        "revoked_at": _when(record.revoked_at),
        "identity_key": record.identity_key,
        "identity_pending": record.identity_pending,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def room_payload(record: RoomRecord) -> bytes:
    """What a room row's signature covers: the room key and id, its label and audience,
    the servers its members may come from, its name, origin and closing."""
    body = {
        "row": "room",
        "key": str(record.key),
        "room_id": record.room_id,
        "name": record.name,
        "label": record.label,
        "scheme": record.scheme,
        "rank": record.rank,
        "audience": sorted(record.audience),
        "servers": sorted(record.servers) if record.servers is not None else None,
        "origin": str(record.origin),
        "closed_at": _when(record.closed_at),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


class RegisterVerifier:
    """Verifies register rows: all the gate holds (a public key, no secret; see
    `store.register_public_key`)."""

    def __init__(self, public: Ed25519PublicKey) -> None:
        self._public = public

    @classmethod
    def from_text(cls, text: str) -> RegisterVerifier:
        """From `store.register_public_key`'s text (`ed25519:`, the raw key in base64)."""
        scheme, _, body = text.strip().partition(":")
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if scheme != "ed25519" or len(raw) != 32:
            raise ValueError("a register key is 'ed25519:' and 32 bytes in base64")
        return cls(Ed25519PublicKey.from_public_bytes(raw))

    @property
    def text(self) -> str:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        raw = self._public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return "ed25519:" + base64.b64encode(raw).decode("ascii")

    def verifies(self, payload: bytes, signature: str | None) -> bool:
        if not signature:
            return False
        try:
            self._public.verify(base64.b64decode(signature, validate=True), payload)
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True

    def clearance_verifies(self, record: ClearanceRecord, signature: str | None) -> bool:
        return self.verifies(clearance_payload(record), signature)

    def room_verifies(self, record: RoomRecord, signature: str | None) -> bool:
        return self.verifies(room_payload(record), signature)


class RegisterSigner(RegisterVerifier):
    """Signs register rows as the bot (and the CLI, with the data key) writes them."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        super().__init__(private.public_key())
        self._private = private

    @classmethod
    def from_audit_key(cls, audit_key: bytes) -> RegisterSigner:
        """Derived from the audit key (itself derived from the data key): every store that
        can write the audit log can sign the register, with no other key to configure."""
        seed = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"liaison-bot register rows"
        ).derive(audit_key)
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, payload: bytes) -> str:
        return base64.b64encode(self._private.sign(payload)).decode("ascii")

    def sign_clearance(self, record: ClearanceRecord) -> str:
        return self.sign(clearance_payload(record))

    def sign_room(self, record: RoomRecord) -> str:
        return self.sign(room_payload(record))


_PRECEDENCES = {int(p): p for p in Precedence}


def _precedence(value: int) -> Precedence:
    """`Precedence(value)` without the enum call's cost (a search opens 100 000 items);
    a value out of range still raises ValueError, as the enum does."""
    found = _PRECEDENCES.get(value)
    return found if found is not None else Precedence(value)
