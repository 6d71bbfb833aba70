"""Storage: the SQLAlchemy 2 models and the small functions the rest of the bot calls.

One module owns every table and every query, so no SQL lives anywhere else.
The schema itself changes only through Alembic revisions in `migrations/`; a test checks
that these models and the migrations agree. Functions are synchronous and each runs one
transaction; the bot calls them from a worker thread so the event loop never blocks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    Engine,
    Row,
    delete,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import (
    Session,
    sessionmaker,
)

from bot.storage.bulk import ChangeKind, ClearanceChange, ImportRefused, WantedClearance
from bot.storage.models import (
    GENESIS_HASH,
    AuditHeadRow,
    AuditRow,
    BotSessionRow,
    CiphertextRow,
    ClearanceCaveatRow,
    ClearanceRow,
    CrossSigningRow,
    DigestRunRow,
    DigestScheduleRow,
    DirectRoomRow,
    GrantRow,
    HandledEventRow,
    IntelItemRow,
    PendingEventRow,
    RelayRow,
    ReleaseRequestRow,
    ReleaseTargetRow,
    RoomRow,
    RoomSnapshotRow,
    RouteRow,
    SiemCursorRow,
    SyncStateRow,
    make_engine,
    utcnow,
)
from bot.storage.records import (
    AuditEntry,
    AuditNote,
    AuditVerdict,
    BotSession,
    ChainedAudit,
    ClearanceRecord,
    DigestRun,
    DigestSchedule,
    GrantRecord,
    HoldState,
    IntelItem,
    NewHeldTarget,
    NewHold,
    Origin,
    PendingEvent,
    PendingOutcome,
    RegisterSigner,
    RelayEntry,
    RelayKind,
    RelayState,
    ReleaseRequest,
    RoomRecord,
    RunState,
    ScheduleKey,
    SiemCursor,
    SiemPosition,
    StoreError,
)

log = logging.getLogger(__name__)
REGISTER_KEYED = "register.keyed"  # the audit action of the one-off signing of old rows
SIEM_REWOUND = "siem.rewound"
# Set in a session's info by a data key rotation: its rows may move the key marker.
REKEYING = "rekeying"
AUDIT_REKEYED = "audit.rekeyed"  # the first row under a new data key (`keys rotate --data`)
# Set in a session's info by `append_audit`: its commit tells the audit listeners.
_AUDITED = "audited"


class Store:
    """Small intent-named functions over one engine, each one transaction."""

    def __init__(self, engine: Engine, audit_key: bytes | None = None) -> None:
        self.engine = engine
        self.audit_key = audit_key  # audit_key_from(the data key); None: cannot extend a keyed log
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._item_listeners: list[Callable[[str], None]] = []
        self._signer: tuple[bytes, RegisterSigner] | None = None
        self._register_keyed = False  # known to be keyed (REGISTER_KEYED is in the log)
        self._refused: set[tuple[str, str, str | None]] = set()  # reported once each
        self._refusal_listeners: list[Callable[[str, str], None]] = []
        self._audit_listeners: list[Callable[[], None]] = []

    @classmethod
    def from_url(
        cls,
        url: str,
        audit_key: bytes | None = None,
        connect_params: Callable[[], Mapping[str, str]] | None = None,
    ) -> Store:
        return cls(make_engine(url, connect_params), audit_key)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            session.info["audit_key"] = self.audit_key
            yield session
        if session.info.get(_AUDITED):  # committed: the rows are there for any reader
            for listener in list(self._audit_listeners):  # one may go meanwhile (a thread)
                listener()

    def key_audit_log(self) -> None:
        """Key the audit log from its next row on, if it is not yet (the bot does this at
        start, so a log it has written to always carries the key marker); then sign the
        register rows from before their signatures, once (`key_register`)."""
        if self.audit_key is None:
            raise StoreError("keying the audit log needs the data key")
        with self.session() as session:
            head = session.get(AuditHeadRow, 1)
            if head is None or head.keyed_from is None:
                ran = _bot_has_run(session)
                if ran is not None:
                    # A bot that ran keyed the log before writing any of this: the marker
                    # was removed. Keying now would vouch for rows anyone could rewrite, and
                    # sign register rows inserted meanwhile (`key_register`).
                    raise StoreError(
                        f"the audit log carries no key marker, but the bot has run on this "
                        f"database ({ran}): someone with write access to the database removed "
                        "it. Not starting: the log and the register cannot be trusted; "
                        "restore a backup (liaison-bot audit verify says the same)"
                    )
                append_audit(session, "liaison-bot", "audit.keyed")
        self.key_register()

    # ------------------------------------------------------------ register integrity

    @property
    def register_signer(self) -> RegisterSigner | None:
        """The register's signing key, derived from the audit key; None without it (then
        rows are written unsigned and read unverified: only a store with the data key, as
        the bot's always is, protects the register)."""
        key = self.audit_key
        if key is None:
            return None
        if self._signer is None or self._signer[0] != key:
            self._signer = (key, RegisterSigner.from_audit_key(key))
        return self._signer[1]

    def add_refusal_listener(self, listener: Callable[[str, str], None]) -> None:
        """Call `listener(kind, name)` ("clearance" and a user id, or "room" and a room key)
        the first time a register row that does not verify is refused (the bot alerts its
        admins). Called inside the reading transaction: it must only take note."""
        self._refusal_listeners.append(listener)

    def key_register(self) -> int:
        """Sign the clearance and room rows stored before rows were signed (migration 0012
        could not: it has no key), once: the audit log records it (REGISTER_KEYED, with the
        rows signed), and from then on an unsigned row is refused like a forged one. Done
        at the bot's start (`key_audit_log`), before anything reads the register. Returns
        how many rows were signed."""
        signer = self.register_signer
        if signer is None:
            raise StoreError("signing the register needs the data key")
        with self.session() as session:
            if _register_keyed(session):
                self._register_keyed = True
                return 0
            unsigned = session.scalar(
                select(ClearanceRow.id).where(ClearanceRow.signature.is_(None)).limit(1)
            ) or session.scalar(select(RoomRow.id).where(RoomRow.signature.is_(None)).limit(1))
        if unsigned is not None:
            # The marker is missing: the first start on signed rows, or someone with write
            # access removed or renamed it (to have rows they inserted signed). That breaks
            # the keyed chain, so the chain must be intact before anything is signed.
            verdict = self.verify_audit()
            if not verdict.intact:
                log.error(
                    "unsigned register rows are not signed: the audit log is not intact (%s); "
                    "they stay refused",
                    verdict.message,
                )
                return 0
        with self.session() as session:
            if _register_keyed(session):
                self._register_keyed = True
                return 0
            users, rooms = [], []
            for row in session.scalars(
                select(ClearanceRow).where(ClearanceRow.signature.is_(None))
            ):
                row.signature = signer.sign_clearance(ClearanceRecord.of(row))
                users.append(row.user_id)
            for room in session.scalars(select(RoomRow).where(RoomRow.signature.is_(None))):
                room.signature = signer.sign_room(RoomRecord.of(room))
                rooms.append(room.key)
            append_audit(
                session,
                "liaison-bot",
                REGISTER_KEYED,
                None,
                {"clearances": sorted(users), "rooms": sorted(rooms)},
            )
        self._register_keyed = True
        return len(users) + len(rooms)

    def _verified_clearance(self, session: Session, row: ClearanceRow) -> ClearanceRecord | None:
        """The row's record if its signature verifies (or the store cannot verify); None,
        logged and (once) audited naming the user, if it does not: a row written or
        changed outside the bot grants nothing."""
        record = ClearanceRecord.of(row)
        signer = self.register_signer
        if signer is None or signer.clearance_verifies(record, row.signature):
            return record
        self._refuse(session, "clearance", row.user_id, row.signature)
        return None

    def _clearance_verifies(self, row: ClearanceRow) -> bool:
        """Whether the row verifies (or the store cannot tell), without reporting it: for
        a change that refuses, or removes, what does not."""
        signer = self.register_signer
        return signer is None or signer.clearance_verifies(ClearanceRecord.of(row), row.signature)

    def _verified_room(self, session: Session, row: RoomRow) -> RoomRecord | None:
        """As `_verified_clearance`, for a managed room (named by its key)."""
        record = RoomRecord.of(row)
        signer = self.register_signer
        if signer is None or signer.room_verifies(record, row.signature):
            return record
        self._refuse(session, "room", row.key, row.signature)
        return None

    def _refuse(self, session: Session, kind: str, name: str, signature: str | None) -> None:
        if signature is None and not self._register_keyed:
            self._register_keyed = _register_keyed(session)
            if not self._register_keyed:  # from before signatures: signed at the next start
                log.warning("%s row %s is not signed yet: refused until the bot starts", kind, name)
                return
        log.error("%s row %s does not verify (changed outside the bot): refused", kind, name)
        if (kind, name, signature) in self._refused:
            return
        self._refused.add((kind, name, signature))
        reason = "unsigned" if signature is None else "signature does not verify"
        append_audit(
            session, "liaison-bot", "register.refused", name, {"row": kind, "reason": reason}
        )
        for listener in self._refusal_listeners:
            listener(kind, name)

    def _sign_clearance(self, row: ClearanceRow) -> None:
        signer = self.register_signer
        row.signature = signer.sign_clearance(ClearanceRecord.of(row)) if signer else None

    def _sign_room(self, row: RoomRow) -> None:
        signer = self.register_signer
        row.signature = signer.sign_room(RoomRecord.of(row)) if signer else None

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
        """Append one entry to the hash chain, in a transaction of its own."""
        with self.session() as session:
            return append_audit(session, actor, action, subject, detail, at)

    def recent_audit(self, limit: int = 20) -> list[AuditEntry]:
        with self.session() as session:
            rows = session.scalars(select(AuditRow).order_by(AuditRow.id.desc()).limit(limit))
            return [AuditEntry.of(r) for r in rows]

    def verify_audit(self) -> AuditVerdict:
        """Walk the chain: each row's hash (an HMAC from the key marker on), each link, the
        stored head and the marker's seal. With write access alone the rows can be rewritten
        and re-hashed, but not re-keyed: that needs the data key. A keyed log and a store
        without the key: StoreError (it cannot be checked, which is not broken)."""
        key = self.audit_key
        with self.session() as session:
            if self.engine.dialect.name == "postgresql":
                # One snapshot for the head and the rows: under READ COMMITTED a row a
                # running bot commits between the two reads would look like the head
                # missing its newest rows, a false "BROKEN". (SQLite: a transaction is one
                # snapshot already.)
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            head = session.get(AuditHeadRow, 1)
            keyed_from = head.keyed_from if head is not None else None
            if keyed_from is not None:
                if key is None:  # not a verdict: nothing was checked
                    raise StoreError(
                        "the audit log is keyed with the data key: set it "
                        "(storage.data_key_env) to verify it"
                    )
                if not head_seal_ok(head, key):  # type: ignore[arg-type]  # keyed_from is set: head is not None
                    return AuditVerdict(False, 0, "the key marker was changed or the head moved")
            elif key is not None and (ran := _bot_has_run(session)) is not None:
                return AuditVerdict(
                    False,
                    0,
                    f"the log carries no key marker though the bot has run ({ran}): the "
                    "marker was removed",
                )
            prev = GENESIS_HASH
            last: AuditRow | None = None
            count = 0
            # After a data key rotation (`audit.rekeyed`, bot/storage/rotate.py) the keyed rows
            # before the newest rekey row were HMAC'd with an older key: with the current one
            # they are checked through that row's anchor, the current key's HMAC over every
            # row before it (contents and stored hashes), instead of one by one.
            rekeyed = (
                session.scalar(
                    select(func.max(AuditRow.id)).where(AuditRow.action == AUDIT_REKEYED)
                )
                if keyed_from is not None
                else None
            )
            anchor = chain_anchor(key) if rekeyed is not None and key is not None else None
            for row in session.scalars(select(AuditRow).order_by(AuditRow.id)):
                if row.prev_hash != prev:
                    return AuditVerdict(False, count, f"row {row.id}: chain broken before it")
                keyed = keyed_from is not None and row.id >= keyed_from
                if anchor is not None and rekeyed is not None and row.id < rekeyed:
                    if not keyed and not hmac.compare_digest(audit_hash(row), row.hash):
                        return AuditVerdict(False, count, f"row {row.id}: contents were modified")
                    add_to_anchor(anchor, row)
                else:
                    if not hmac.compare_digest(audit_hash(row, key if keyed else None), row.hash):
                        return AuditVerdict(False, count, f"row {row.id}: contents were modified")
                    if (
                        anchor is not None
                        and row.id == rekeyed
                        and not hmac.compare_digest(
                            str(row.detail.get("anchor", "")), anchor.hexdigest()
                        )
                    ):
                        return AuditVerdict(
                            False,
                            count,
                            f"row {row.id}: rows before the key rotation were modified",
                        )
                prev, last, count = row.hash, row, count + 1
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

    # ------------------------------------------------------------ export to the SIEM

    def add_audit_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after each committed transaction of this store that appended
        audit rows, from the thread that committed it. Why: the SIEM exporter sends rows
        as they are written, and a wake-up costs less than a tight poll (rows another
        process writes, the CLI's, it finds by polling). The listener must only take note
        (it runs inside the writer's call) and never raise."""
        self._audit_listeners.append(listener)

    def remove_audit_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling a listener `add_audit_listener` added (an exporter that stopped)."""
        self._audit_listeners.remove(listener)

    def siem_cursor(self) -> SiemCursor | None:
        """The SIEM cursor (None only if its row was deleted by hand)."""
        with self.session() as session:
            row = session.get(SiemCursorRow, 1)
            return SiemCursor.of(row) if row is not None else None

    def siem_installation(self) -> str:
        """The installation id the exported events carry: a random uuid, made once with the
        cursor row (revision 0015) and kept, so that the SIEM can tell this bot's events
        from another's."""
        with self.session() as session:
            return _siem_cursor_row(session).installation

    def start_siem_cursor(self, *, from_now: bool) -> SiemCursor:
        """The cursor, started if it was not: before the first audit row (every row is
        sent) or, `from_now`, after the newest one (only rows written from now on). A
        started cursor is returned as it is: `[siem] start` applies to a new cursor only,
        so changing it never skips or repeats what was delivered."""
        with self.session() as session:
            row = _siem_cursor_row(session, lock=True)
            if row.last_id is None or row.last_hash is None:
                head = session.get(AuditHeadRow, 1) if from_now else None
                row.last_id = head.last_id if head is not None else 0
                row.last_hash = head.hash if head is not None else GENESIS_HASH
            return SiemCursor.of(row)

    def audit_after(
        self, after_id: int, limit: int, until_id: int | None = None
    ) -> list[ChainedAudit]:
        """Audit rows whose id is above `after_id` (and at most `until_id`), lowest first,
        at most `limit`, with their chain links.

        Why reading by id loses nothing: every append locks the audit head row (FOR UPDATE;
        on SQLite the write lock) before its row gets its id, and holds the lock until it
        commits, so rows commit in id order: none can appear later below an id already
        read (an id a rolled-back append took is only a gap)."""
        with self.session() as session:
            query = select(AuditRow).where(AuditRow.id > after_id)
            if until_id is not None:
                query = query.where(AuditRow.id <= until_id)
            rows = session.scalars(query.order_by(AuditRow.id).limit(limit))
            return [ChainedAudit.of(r) for r in rows]

    def audit_rows_after(self, after_id: int) -> int:
        """How many audit rows have an id above `after_id`: the SIEM's lag, in rows."""
        with self.session() as session:
            count = session.scalar(
                select(func.count()).select_from(AuditRow).where(AuditRow.id > after_id)
            )
            return int(count or 0)

    def advance_siem_cursor(
        self, seen: SiemPosition, to: SiemPosition, recovered: AuditNote | None = None
    ) -> bool:
        """Move the cursor from `seen` to `to` once the SIEM confirmed the rows between,
        ending an outage in progress (appending `recovered`, if given, in the same
        transaction). False, changing nothing, if the cursor is no longer at `seen`: it was
        rewound, or another exporter moved it, while the batch was on its way; the row is
        locked while it is checked and moved (FOR UPDATE on PostgreSQL, the write lock on
        SQLite), so two movers cannot both pass the check."""
        with self.session() as session:
            row = _siem_cursor_row(session, lock=True)
            if (row.last_id, row.last_hash) != (seen.last_id, seen.last_hash):
                return False
            outage = row.failures > 0
            row.last_id, row.last_hash = to.last_id, to.last_hash
            row.confirmed_at = utcnow()
            row.failures, row.failing_since, row.last_error = 0, None, None
            if outage and recovered is not None:
                append_audit(
                    session, recovered.actor, recovered.action, recovered.subject, recovered.detail
                )
            return True

    def record_siem_failure(self, error: str, unreachable: AuditNote) -> SiemCursor:
        """Note a failed delivery (the error, for `audit siem-status`). The first failure
        of an outage also appends `unreachable`, in the same transaction: one row per
        outage however often it is retried, and a restart during it writes none."""
        with self.session() as session:
            row = _siem_cursor_row(session, lock=True)
            if row.failures == 0:
                row.failing_since = utcnow()
                append_audit(
                    session,
                    unreachable.actor,
                    unreachable.action,
                    unreachable.subject,
                    unreachable.detail,
                )
            row.failures += 1
            row.last_error = error
            return SiemCursor.of(row)

    def rewind_siem_cursor(self, actor: str, to_id: int) -> SiemCursor:
        """Send again everything after row `to_id` (0: the whole log), audited
        `siem.rewound` in the same transaction. StoreError, changing nothing, for a row
        that does not exist or lies after the cursor: a rewind never skips a row the
        exporter was to send (a cursor not started yet starts there: `[siem] start` had
        promised nothing)."""
        with self.session() as session:
            row = _siem_cursor_row(session, lock=True)
            if to_id < 0:
                raise StoreError(f"--to {to_id}: audit row ids start at 1 (0: the whole log)")
            if row.last_id is not None and to_id > row.last_id:
                raise StoreError(
                    f"--to {to_id}: after the cursor (row {row.last_id}); a rewind resends, it "
                    "never skips rows"
                )
            target = GENESIS_HASH
            if to_id:
                found = session.get(AuditRow, to_id)
                if found is None:
                    raise StoreError(f"--to {to_id}: no audit row with that id")
                target = found.hash
            previous = row.last_id
            row.last_id, row.last_hash = to_id, target
            append_audit(session, actor, SIEM_REWOUND, None, {"from": previous, "to": to_id})
            return SiemCursor.of(row)

    # ------------------------------------------------------------ sync state

    def sync_token(self) -> str | None:
        with self.session() as session:
            row = session.get(SyncStateRow, 1)
            return row.next_batch if row else None

    def save_sync_token(
        self,
        token: str,
        snapshots: Mapping[str, str] | None = None,
        forgotten: Iterable[str] = (),
        *,
        complete: bool = False,
    ) -> None:
        """The token, and in the same transaction the sealed snapshots of the rooms its sync
        touched (`forgotten`: rooms left), so snapshots and token never disagree.
        `complete`: `snapshots` is every joined room (a full sync); all other rows go."""
        with self.session() as session:
            row = session.get(SyncStateRow, 1)
            if row is None:
                session.add(SyncStateRow(id=1, next_batch=token))
            else:
                row.next_batch = token
            gone = list(forgotten)
            if complete:
                session.execute(
                    delete(RoomSnapshotRow).where(
                        RoomSnapshotRow.room_id.not_in(list(snapshots or {}))
                    )
                )
            if gone:
                session.execute(delete(RoomSnapshotRow).where(RoomSnapshotRow.room_id.in_(gone)))
            for room_id, sealed in (snapshots or {}).items():
                session.merge(RoomSnapshotRow(room_id=room_id, sealed=sealed))

    def room_snapshots(self) -> dict[str, str]:
        """Every stored room snapshot (sealed), by room id."""
        with self.session() as session:
            return {
                r.room_id: r.sealed
                for r in session.execute(select(RoomSnapshotRow.room_id, RoomSnapshotRow.sealed))
            }

    # ------------------------------------------------------------ bot session

    def bot_session(self) -> BotSession | None:
        with self.session() as session:
            row = session.get(BotSessionRow, 1)
            return BotSession(row.user_id, row.device_id, row.access_token) if row else None

    def forget_bot_session(self, actor: str) -> str | None:
        """Delete the stored login (its token stolen, its device deleted on the server), so
        the next start logs in with the password as a new device; audited
        (`bot.login.forgotten`, the old device id) in the same transaction. Returns the old
        device id, None if there was no login."""
        with self.session() as session:
            row = session.get(BotSessionRow, 1)
            if row is None:
                return None
            device_id = row.device_id
            session.delete(row)
            append_audit(session, actor, "bot.login.forgotten", row.user_id, {"device": device_id})
            return device_id

    def save_bot_session(self, user_id: str, device_id: str, sealed_token: str) -> None:
        with self.session() as session:
            row = session.get(BotSessionRow, 1)
            if row is None:
                session.add(
                    BotSessionRow(
                        id=1, user_id=user_id, device_id=device_id, access_token=sealed_token
                    )
                )
            else:
                row.user_id, row.device_id, row.access_token = user_id, device_id, sealed_token

    # ------------------------------------------------------------ handled events

    def is_handled(self, event_id: str) -> bool:
        with self.session() as session:
            return session.get(HandledEventRow, event_id) is not None

    def mark_handled(self, event_id: str, room_id: str) -> bool:
        """Record an event as acted on; False if it already was (a replay)."""
        with self.session() as session:
            if session.get(HandledEventRow, event_id) is not None:
                return False
            session.add(HandledEventRow(event_id=event_id, room_id=room_id))
            return True

    def claim_ciphertext(self, ciphertext: str, event_id: str) -> bool:
        """Record that `event_id` is the encrypted message `ciphertext` (sender key, session,
        index); False if that message was already acted on under another event id: a replay."""
        with self.session() as session:
            row = session.get(CiphertextRow, ciphertext)
            if row is None:
                session.add(CiphertextRow(ciphertext=ciphertext, event_id=event_id))
                return True
            return row.event_id == event_id

    def prune_handled(self, before: datetime) -> int:
        with self.session() as session:
            result = session.execute(
                delete(HandledEventRow).where(HandledEventRow.handled_at < before)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    # ------------------------------------------------------------ direct rooms

    def direct_room(self, user_id: str) -> str | None:
        with self.session() as session:
            row = session.get(DirectRoomRow, user_id)
            return row.room_id if row else None

    def direct_rooms(self) -> dict[str, str]:
        """room id -> partner user id."""
        with self.session() as session:
            return {r.room_id: r.user_id for r in session.scalars(select(DirectRoomRow))}

    def save_direct_room(self, user_id: str, room_id: str) -> None:
        with self.session() as session:
            session.execute(delete(DirectRoomRow).where(DirectRoomRow.room_id == room_id))
            row = session.get(DirectRoomRow, user_id)
            if row is None:
                session.add(DirectRoomRow(user_id=user_id, room_id=room_id))
            else:
                row.room_id = room_id

    def forget_direct_room(self, room_id: str) -> None:
        with self.session() as session:
            session.execute(delete(DirectRoomRow).where(DirectRoomRow.room_id == room_id))

    # ------------------------------------------------------------ rooms

    def rooms(self) -> list[RoomRecord]:
        """Every managed room whose row verifies (a refused one is left out: not managed)."""
        return self.rooms_and_refused()[0]

    def rooms_and_refused(self) -> tuple[list[RoomRecord], list[str]]:
        """The rooms whose rows verify, and the keys of those whose rows do not, from one
        read: a start must not take a refused room for missing and create a new one in
        its place."""
        verified: list[RoomRecord] = []
        refused: list[str] = []
        with self.session() as session:
            for row in session.scalars(select(RoomRow).order_by(RoomRow.id)):
                record = self._verified_room(session, row)
                if record is None:
                    refused.append(row.key)
                else:
                    verified.append(record)
        return verified, refused

    def room(self, key: str) -> RoomRecord | None:
        with self.session() as session:
            row = session.scalar(select(RoomRow).where(RoomRow.key == key))
            return self._verified_room(session, row) if row else None

    def save_room(self, record: RoomRecord, actor: str = "liaison-bot") -> RoomRecord:
        """Insert or update a managed room by key, audited as `room.provisioned`/`room.updated`."""
        with self.session() as session:
            row = session.scalar(select(RoomRow).where(RoomRow.key == record.key))
            action = "room.updated"
            if row is None:
                row = RoomRow(key=record.key)
                session.add(row)
                action = "room.provisioned"
            before = RoomRecord.of(row) if row.id is not None else None
            row.room_id = record.room_id
            row.name = record.name
            row.label = record.label
            row.scheme = record.scheme
            row.rank = record.rank
            row.audience = sorted(record.audience)
            row.servers = sorted(record.servers) if record.servers is not None else None
            row.origin = record.origin
            row.closed_at = record.closed_at
            self._sign_room(row)  # every signed field was just set from `record`
            session.flush()
            after = RoomRecord.of(row)
            if before != after:
                append_audit(
                    session,
                    actor,
                    action,
                    record.key,
                    {"room_id": record.room_id, "label": record.label},
                )
            return after

    # ------------------------------------------------------------ clearances

    def clearance(self, user_id: str) -> ClearanceRecord | None:
        """The user's record; None if there is none or its row does not verify."""
        with self.session() as session:
            row = session.scalar(select(ClearanceRow).where(ClearanceRow.user_id == user_id))
            return self._verified_clearance(session, row) if row else None

    def clearances_of(self, user_ids: Iterable[str]) -> list[ClearanceRecord]:
        """The records of these users (those that have one that verifies), in one query."""
        wanted = sorted(set(user_ids))
        if not wanted:
            return []
        with self.session() as session:
            rows = session.scalars(select(ClearanceRow).where(ClearanceRow.user_id.in_(wanted)))
            records = [self._verified_clearance(session, r) for r in rows]
            return [r for r in records if r is not None]

    def clearances(self) -> list[ClearanceRecord]:
        """Every record whose row verifies."""
        with self.session() as session:
            rows = session.scalars(select(ClearanceRow).order_by(ClearanceRow.user_id))
            records = [self._verified_clearance(session, r) for r in rows]
            return [r for r in records if r is not None]

    def grant(
        self,
        actor: str,
        user_id: str,
        scheme: str,
        level: str,
        rank: int,
        *,
        nationality: str | None = None,
        expires: date | None = None,
        caveats: Iterable[str] = (),
    ) -> ClearanceRecord:
        """Set the user's grant in one scheme (raise or lower), audited in the same
        transaction. A first grant needs a nationality; a grant after a revocation restores
        the record. Raises StoreError naming what is missing."""
        with self.session() as session:
            row = session.scalar(select(ClearanceRow).where(ClearanceRow.user_id == user_id))
            if row is None:
                if nationality is None:
                    raise StoreError(
                        f"{user_id} has no clearance yet: a first grant needs --nationality"
                    )
                row = ClearanceRow(user_id=user_id, nationality=nationality)
                session.add(row)
            elif not self._clearance_verifies(row):
                raise StoreError(
                    f"the register row of {user_id} does not verify (it was changed outside "
                    "the bot): revoke all of it first, then grant afresh"
                )
            elif nationality is not None:
                row.nationality = nationality
            restored = row.revoked_at is not None
            row.revoked_at = None
            if expires is not None:
                row.expires = expires
            grant = next((g for g in row.grants if g.scheme == scheme), None)
            previous = grant.level if grant else None
            if grant is None:
                row.grants.append(GrantRow(scheme=scheme, level=level, rank=rank))
            else:
                grant.level, grant.rank, grant.granted_at = level, rank, utcnow()
            held = {c.caveat for c in row.caveats}
            for caveat in sorted(set(caveats) - held):
                row.caveats.append(ClearanceCaveatRow(caveat=caveat))
            self._sign_clearance(row)
            session.flush()
            detail: dict[str, Any] = {
                "scheme": scheme,
                "level": level,
                "previous": previous,
                "nationality": row.nationality,
            }
            if expires is not None:
                detail["expires"] = expires.isoformat()
            if caveats:
                detail["caveats"] = sorted(set(caveats))
            if restored:
                detail["restored"] = True
            append_audit(session, actor, "clearance.grant", user_id, detail)
            return ClearanceRecord.of(row)

    def revoke(self, actor: str, user_id: str, scheme: str | None = None) -> ClearanceRecord:
        """Revoke one scheme's grant, or the whole record (scheme None), audited."""
        with self.session() as session:
            row = session.scalar(select(ClearanceRow).where(ClearanceRow.user_id == user_id))
            if row is None:
                raise StoreError(f"{user_id} has no clearance to revoke")
            if not self._clearance_verifies(row):
                if scheme is not None:
                    raise StoreError(
                        f"the register row of {user_id} does not verify (it was changed "
                        "outside the bot): revoke all of it"
                    )
                # Nothing of a forged row is kept to be signed later: it goes, audited.
                gone = replace(
                    ClearanceRecord.of(row), grants=(), caveats=frozenset(), revoked_at=utcnow()
                )
                session.delete(row)
                session.flush()
                append_audit(
                    session,
                    actor,
                    "clearance.revoke",
                    user_id,
                    {"scope": "all", "unverified": True, "removed": True},
                )
                return gone
            if scheme is None:
                row.revoked_at = utcnow()
                row.grants.clear()
                detail: dict[str, Any] = {"scope": "all"}
            else:
                grant = next((g for g in row.grants if g.scheme == scheme), None)
                if grant is None:
                    held = ", ".join(sorted(g.scheme for g in row.grants)) or "none"
                    raise StoreError(f"{user_id} holds no {scheme} grant (grants: {held})")
                row.grants.remove(grant)
                detail = {"scope": scheme, "level": grant.level}
            self._sign_clearance(row)
            session.flush()
            append_audit(session, actor, "clearance.revoke", user_id, detail)
            return ClearanceRecord.of(row)

    def import_clearances(
        self,
        actor: str,
        wanted: Sequence[WantedClearance],
        *,
        today: date,
        revoke_missing: bool = False,
        dry_run: bool = False,
    ) -> list[ClearanceChange]:
        """Bring the register to the state `wanted` names, person by person, in ONE
        transaction (all or nothing), audited with the rows `grant` and `revoke` write
        (`_import_set`, `_import_revoke`).
        People the file leaves out are left as they are, or revoked with `revoke_missing`.
        An expiry before `today` is refused unless it is already the record's (an export
        of an expired clearance reads back in unchanged). Problems found with the register
        (a row changed outside the bot, a past expiry) raise ImportRefused listing every
        one, and nothing is written; `dry_run` plans the same and writes nothing."""
        with self.session() as session:
            rows = {r.user_id: r for r in session.scalars(select(ClearanceRow))}
            problems: list[str] = []
            plan: list[tuple[ClearanceChange, WantedClearance | None]] = []
            # Matrix ids are compared exactly, so "@Alice:…" is not "@alice:…"; but a file
            # that names one where the register (or the file) holds the other is a typo
            # that would leave the person the administrator meant as they are (a revocation
            # that revokes nobody): refused, naming both.
            by_case = {user_id.casefold(): user_id for user_id in rows}
            for wish in wanted:
                other = by_case.setdefault(wish.user_id.casefold(), wish.user_id)
                if other != wish.user_id:
                    problems.append(
                        f"{wish.where}: user {wish.user_id} differs from {other} only in letter "
                        "case; Matrix ids are case-sensitive: give the exact id"
                    )
                    continue
                row = rows.get(wish.user_id)
                if row is not None and not self._clearance_verifies(row):
                    problems.append(
                        f"{wish.where}: user {wish.user_id}: the register row does not verify "
                        "(changed outside the bot); revoke all of it first, then import"
                    )
                    continue
                change = _planned_change(row, wish)
                if (
                    change.kind in (ChangeKind.ADDED, ChangeKind.CHANGED)
                    and wish.expires is not None
                    and wish.expires < today
                    and (row is None or row.expires != wish.expires)
                ):
                    problems.append(
                        f"{wish.where}: expires {wish.expires.isoformat()} is in the past "
                        f"(today is {today.isoformat()}, UTC)"
                    )
                plan.append((change, wish))
            if revoke_missing:
                named = {w.user_id for w in wanted}
                for user_id in sorted(set(rows) - named):
                    if rows[user_id].revoked_at is None:
                        missing = ClearanceChange(user_id, ChangeKind.REVOKED, missing=True)
                        plan.append((missing, None))
            if problems:
                raise ImportRefused(problems)
            if dry_run:
                return [change for change, _ in plan]
            for change, want in plan:
                if change.kind is ChangeKind.UNCHANGED:
                    continue
                row = rows.get(change.user_id)
                if change.kind is ChangeKind.REVOKED:
                    assert row is not None  # planned only for an active record
                    self._import_revoke(session, actor, row)
                    continue
                assert want is not None
                self._import_set(session, actor, row, want)
            return [change for change, _ in plan]

    def _import_revoke(self, session: Session, actor: str, row: ClearanceRow) -> None:
        """Revoke all of a record for `import_clearances`, as `revoke` does (a forged row
        left out of the file goes, as `revoke` removes one), with the same audit row."""
        if not self._clearance_verifies(row):
            session.delete(row)
            detail: dict[str, Any] = {"scope": "all", "unverified": True, "removed": True}
        else:
            row.revoked_at = utcnow()
            row.grants.clear()
            self._sign_clearance(row)
            detail = {"scope": "all"}
        session.flush()
        append_audit(session, actor, "clearance.revoke", row.user_id, detail)

    def _import_set(
        self, session: Session, actor: str, row: ClearanceRow | None, want: WantedClearance
    ) -> None:
        """Set a record to `want` for `import_clearances`. Audited with the rows the single
        commands write, so that whatever reads the log (the SIEM's rules on a level
        granted, `!audit`) sees an import as it sees `clearance grant` and `revoke`: one
        `clearance.grant` per grant added or changed, one `clearance.revoke` per grant
        removed, and where only the nationality, caveats or expiry change, one
        `clearance.grant` of the highest grant as it stands (previous = level)."""
        if row is None:
            row = ClearanceRow(user_id=want.user_id, nationality=want.nationality)
            session.add(row)
        restored = row.revoked_at is not None
        person_changed = restored or (
            row.nationality != want.nationality
            or row.expires != want.expires
            or {c.caveat for c in row.caveats} != want.caveats
        )
        row.nationality, row.expires, row.revoked_at = want.nationality, want.expires, None
        held = {g.scheme: g for g in row.grants}
        # (grant, previous level); a grant of None: a record without grants (no scheme)
        granted: list[tuple[GrantRecord | None, str | None]] = []
        for grant in want.grants:
            old = held.pop(grant.scheme, None)
            if old is None:
                row.grants.append(GrantRow(scheme=grant.scheme, level=grant.level, rank=grant.rank))
                granted.append((grant, None))
            elif (old.level, old.rank) != (grant.level, grant.rank):
                granted.append((grant, old.level))
                old.level, old.rank, old.granted_at = grant.level, grant.rank, utcnow()
        removed = sorted(held.values(), key=lambda g: (-g.rank, g.scheme))
        for gone in removed:
            row.grants.remove(gone)
        for caveat_row in [c for c in row.caveats if c.caveat not in want.caveats]:
            row.caveats.remove(caveat_row)
        for caveat in sorted(want.caveats - {c.caveat for c in row.caveats}):
            row.caveats.append(ClearanceCaveatRow(caveat=caveat))
        self._sign_clearance(row)
        session.flush()
        if not granted and person_changed:
            top = want.grants[0] if want.grants else None
            granted.append((top, top.level if top else None))
        for given, previous in granted:
            detail: dict[str, Any] = {
                "scheme": given.scheme if given else None,
                "level": given.level if given else None,
                "previous": previous,
                "nationality": want.nationality,
                "expires": want.expires.isoformat() if want.expires else None,
                "caveats": sorted(want.caveats),
            }
            if restored:
                detail["restored"] = True
            append_audit(session, actor, "clearance.grant", want.user_id, detail)
        for gone in removed:
            append_audit(
                session,
                actor,
                "clearance.revoke",
                want.user_id,
                {"scope": gone.scheme, "level": gone.level},
            )

    # ------------------------------------------------------------ cross-signing

    def cross_signing(self) -> tuple[str, str, str] | None:
        """(user id, master public key, sealed private keys) of the bot, if generated."""
        with self.session() as session:
            row = session.get(CrossSigningRow, 1)
            return (row.user_id, row.master_key, row.sealed) if row else None

    def save_cross_signing(self, user_id: str, master_key: str, sealed: str, actor: str) -> None:
        with self.session() as session:
            row = session.get(CrossSigningRow, 1)
            if row is None:
                session.add(
                    CrossSigningRow(id=1, user_id=user_id, master_key=master_key, sealed=sealed)
                )
            else:
                row.user_id, row.master_key, row.sealed = user_id, master_key, sealed
            append_audit(session, actor, "keys.cross-signing", user_id, {"master": master_key})

    # ------------------------------------------------------------ identity pinning

    def pin_identity(
        self, user_id: str, key: str, actor: str, action: str
    ) -> ClearanceRecord | None:
        """Pin `key` as the user's master key (first sight or a confirmed change), audited."""
        with self.session() as session:
            row = session.scalar(select(ClearanceRow).where(ClearanceRow.user_id == user_id))
            if row is None or self._verified_clearance(session, row) is None:
                return None
            previous = row.identity_key
            row.identity_key, row.identity_pending = key, None
            row.identity_pinned_at = utcnow()
            self._sign_clearance(row)
            session.flush()
            append_audit(session, actor, action, user_id, {"key": key, "previous": previous})
            return ClearanceRecord.of(row)

    def flag_identity_change(self, user_id: str, key: str) -> ClearanceRecord | None:
        """Record a changed master key; audited once per new key. None if already flagged."""
        with self.session() as session:
            row = session.scalar(select(ClearanceRow).where(ClearanceRow.user_id == user_id))
            if row is None or row.identity_pending == key:
                return None
            if self._verified_clearance(session, row) is None:
                return None
            row.identity_pending = key
            self._sign_clearance(row)
            session.flush()
            append_audit(
                session,
                "liaison-bot",
                "identity.changed",
                user_id,
                {"pinned": row.identity_key, "seen": key},
            )
            return ClearanceRecord.of(row)

    # ------------------------------------------------------------ undecryptable events

    def add_pending(self, event_id: str, room_id: str, sender: str, event: dict[str, Any]) -> bool:
        with self.session() as session:
            if session.get(PendingEventRow, event_id) is not None:
                return False
            session.add(
                PendingEventRow(event_id=event_id, room_id=room_id, sender=sender, event=event)
            )
            return True

    def open_pending(self) -> list[PendingEvent]:
        with self.session() as session:
            rows = session.scalars(
                select(PendingEventRow)
                .where(PendingEventRow.resolved_at.is_(None))
                .order_by(PendingEventRow.received_at)
            )
            return [
                PendingEvent(r.event_id, r.room_id, r.sender, dict(r.event), r.received_at)
                for r in rows
            ]

    def resolve_pending(
        self, event_id: str, outcome: PendingOutcome, audit: dict[str, Any] | None = None
    ) -> None:
        with self.session() as session:
            row = session.get(PendingEventRow, event_id)
            if row is None or row.resolved_at is not None:
                return
            row.resolved_at, row.outcome = utcnow(), outcome
            if audit is not None:
                append_audit(
                    session,
                    "liaison-bot",
                    f"event.{outcome}",
                    row.sender,
                    {"room_id": row.room_id, "event_id": event_id, **audit},
                )

    # ------------------------------------------------------------ intel items

    def add_item_listener(self, listener: Callable[[str], None]) -> None:
        """Call `listener(event_id)` after each committed change to a stored item (stored,
        edited, retired), from the thread that made it. Why: an edit or a retirement keeps
        the row's id, so the search's in-memory index, which reads new rows by id, would
        not see it; and on PostgreSQL a row may commit after one with a higher id. The
        listener must only take note (it runs inside the writer's call) and never raise."""
        self._item_listeners.append(listener)

    def _item_changed(self, event_id: str) -> None:
        for listener in self._item_listeners:
            listener(event_id)

    def save_item(self, item: IntelItem) -> tuple[IntelItem, bool]:
        """Store a tagged message once per source event; (item, created)."""
        with self.session() as session:
            row = _item_row(session, item.event_id)
            if row is not None:
                return IntelItem.of(row), False
            row = IntelItemRow(
                event_id=item.event_id,
                room_key=item.room_key,
                room_id=item.room_id,
                sender=item.sender,
                label=item.label,
                scheme=item.scheme,
                rank=item.rank,
                precedence=item.precedence,
                exercise=item.exercise,
                topics=list(item.topics),
                text=item.text,
                origin=item.origin,
                created_at=item.created_at,
            )
            session.add(row)
            session.flush()
            stored = IntelItem.of(row)
        self._item_changed(item.event_id)
        return stored, True

    def item(self, event_id: str) -> IntelItem | None:
        with self.session() as session:
            row = _item_row(session, event_id)
            return IntelItem.of(row) if row else None

    def update_item(
        self,
        event_id: str,
        *,
        label: str,
        scheme: str,
        rank: int,
        precedence: int,
        exercise: bool,
        topics: Iterable[str],
        text: str,
    ) -> None:
        """An edit of the source: the item now holds the edited label and text."""
        with self.session() as session:
            row = _item_row(session, event_id)
            if row is None:
                return
            row.label, row.scheme, row.rank = label, scheme, rank
            row.precedence, row.exercise, row.topics = precedence, exercise, list(topics)
            row.text = text
        self._item_changed(event_id)

    def redact_item(self, event_id: str, sealed_empty: str | None) -> IntelItem | None:
        """Retire an item (out of digests and search), keeping the record of what happened;
        its text is replaced by `sealed_empty` unless that is None (kept sealed)."""
        with self.session() as session:
            row = _item_row(session, event_id)
            if row is None:
                return None
            if sealed_empty is not None:
                row.text = sealed_empty
            row.redacted_at = utcnow()
            session.flush()
            retired = IntelItem.of(row)
        self._item_changed(event_id)
        return retired

    def items_since(self, start: datetime, limit: int) -> list[IntelItem]:
        """The newest stored items from `start` on, at most `limit` (search's bounded window);
        equal times newest row first, so the cut at `limit` is the same on every backend and
        the same as the search's in-memory index makes."""
        with self.session() as session:
            rows = session.scalars(
                select(IntelItemRow)
                .where(IntelItemRow.created_at >= start, IntelItemRow.redacted_at.is_(None))
                .order_by(IntelItemRow.created_at.desc(), IntelItemRow.id.desc())
                .limit(limit)
            )
            return [IntelItem.of(r) for r in rows]

    def items_after(self, after_id: int, limit: int) -> list[tuple[int, IntelItem]]:
        """Items not retired whose row id is above `after_id`, lowest id first, at most
        `limit`, each with its row id: what the search's index has not read yet (columns,
        not ORM objects, since a first read may be 100 000 rows)."""
        with self.session() as session:
            rows = session.execute(
                select(*_ITEM_COLUMNS)
                .where(IntelItemRow.id > after_id, IntelItemRow.redacted_at.is_(None))
                .order_by(IntelItemRow.id)
                .limit(limit)
            )
            return [_numbered_item(r) for r in rows]

    def items_with_event_ids(self, event_ids: Iterable[str]) -> list[tuple[int, IntelItem]]:
        """Those of these items that are not retired, each with its row id: the index
        re-reads the items a listener said changed (an id missing from the answer was
        retired, or never committed)."""
        wanted = sorted(set(event_ids))
        out: list[tuple[int, IntelItem]] = []
        with self.session() as session:
            for i in range(0, len(wanted), 500):  # within every backend's parameter limit
                rows = session.execute(
                    select(*_ITEM_COLUMNS).where(
                        IntelItemRow.event_id.in_(wanted[i : i + 500]),
                        IntelItemRow.redacted_at.is_(None),
                    )
                )
                out.extend(_numbered_item(r) for r in rows)
        return out

    def items_between(
        self, room_keys: Iterable[str], start: datetime, end: datetime
    ) -> list[IntelItem]:
        keys = list(room_keys)
        with self.session() as session:
            rows = session.scalars(
                select(IntelItemRow)
                .where(
                    IntelItemRow.room_key.in_(keys),
                    IntelItemRow.created_at >= start,
                    IntelItemRow.created_at < end,
                    IntelItemRow.redacted_at.is_(None),
                )
                .order_by(IntelItemRow.created_at)
            )
            return [IntelItem.of(r) for r in rows]

    # ------------------------------------------------------------ relay ledger

    def add_relays(
        self, rows: Iterable[RelayEntry], audits: Iterable[AuditNote] = ()
    ) -> list[RelayEntry]:
        """Write ledger rows (and their audit entries) in one transaction; rows whose
        transaction id exists are kept as they are. Returns every row, stored state."""
        out: list[RelayEntry] = []
        with self.session() as session:
            for entry in rows:
                out.append(RelayEntry.of(_ledger_row(session, entry)))
            for note in audits:
                append_audit(session, note.actor, note.action, note.subject, note.detail)
        return out

    def relay_sent(self, txn_id: str, target_event_id: str, audit: AuditNote | None = None) -> None:
        with self.session() as session:
            row = session.scalar(select(RelayRow).where(RelayRow.txn_id == txn_id))
            if row is None or row.state == RelayState.SENT:
                return
            row.state, row.target_event_id = RelayState.SENT, target_event_id
            row.sent_at = utcnow()
            if audit is not None:
                append_audit(
                    session,
                    audit.actor,
                    audit.action,
                    audit.subject,
                    {**audit.detail, "target_event_id": target_event_id},
                )

    def relay_state(self, txn_id: str, state: RelayState, audit: AuditNote | None = None) -> None:
        with self.session() as session:
            row = session.scalar(select(RelayRow).where(RelayRow.txn_id == txn_id))
            if row is not None:
                row.state = state
                if audit is not None:
                    append_audit(session, audit.actor, audit.action, audit.subject, audit.detail)

    def pending_relays(self) -> list[RelayEntry]:
        with self.session() as session:
            rows = session.scalars(
                select(RelayRow).where(RelayRow.state == RelayState.PENDING).order_by(RelayRow.id)
            )
            return [RelayEntry.of(r) for r in rows]

    def ledger_of(self, item_event_id: str) -> list[RelayEntry]:
        """Every ledger row of an item: copies, edits and withdrawals."""
        with self.session() as session:
            rows = session.scalars(select(RelayRow).where(RelayRow.item_event_id == item_event_id))
            return [RelayEntry.of(r) for r in rows]

    def blank_ledger(self, sealed: dict[str, str]) -> None:
        """Replace ledger rows' sealed content (txn id -> the sealed blank), when an item is
        forgotten; rows still pending are left to be sent."""
        with self.session() as session:
            for row in session.scalars(select(RelayRow).where(RelayRow.txn_id.in_(sealed))):
                if row.state != RelayState.PENDING:
                    row.content = sealed[row.txn_id]

    def copies_of(self, item_event_id: str) -> list[RelayEntry]:
        """The sent copies (kind copy) of an item, one per target room."""
        with self.session() as session:
            rows = session.scalars(
                select(RelayRow)
                .where(RelayRow.item_event_id == item_event_id, RelayRow.kind == RelayKind.COPY)
                .order_by(RelayRow.id)
            )
            return [RelayEntry.of(r) for r in rows]

    # ------------------------------------------------------------ release holds
    #
    # National release control (four eyes): an item a route holds for a second officer.
    # Every change locks the request row first (FOR UPDATE on PostgreSQL; SQLite's
    # BEGIN IMMEDIATE write lock serialises writers anyway), so two approvers, or an
    # approval and the expiry sweep, decide a target once. A change that changes nothing
    # (a replay, a target decided meanwhile) writes nothing, its audit notes included; the
    # notes of a change get `"targets"`: the target keys it changed, sorted.

    def hold_release(
        self, hold: NewHold, targets: Sequence[NewHeldTarget], audits: Iterable[AuditNote] = ()
    ) -> ReleaseRequest:
        """Store an item held for approval, every target held, with its audit notes. Once
        per item: a replay (the same item event, after a crash) returns the stored request
        and writes nothing."""
        keys = [t.target_key for t in targets]
        if not keys:
            raise StoreError(f"{hold.item_event_id}: a hold needs at least one target")
        if len(set(keys)) != len(keys):
            raise StoreError(f"{hold.item_event_id}: a target is named twice ({keys})")
        with self.session() as session:
            row = _release_row(session, ReleaseRequestRow.item_event_id == hold.item_event_id)
            if row is not None:
                return ReleaseRequest.of(row)
            row = ReleaseRequestRow(
                item_event_id=hold.item_event_id,
                source_key=hold.source_key,
                source_room_id=hold.source_room_id,
                sender=hold.sender,
                sender_device=hold.sender_device,
                label=hold.label,
                scheme=hold.scheme,
                rank=hold.rank,
                held_at=hold.held_at,
                expires_at=hold.expires_at,
                targets=[
                    ReleaseTargetRow(
                        target_key=t.target_key,
                        target_room_id=t.target_room_id,
                        state=HoldState.HELD,
                        content=t.content,
                    )
                    for t in targets
                ],
            )
            try:
                with session.begin_nested():
                    session.add(row)
                    session.flush()
            except IntegrityError:
                # Another process held the same item meanwhile (PostgreSQL): its row counts.
                found = _release_row(session, ReleaseRequestRow.item_event_id == hold.item_event_id)
                if found is None:
                    raise
                return ReleaseRequest.of(found)
            _append_notes(session, audits, keys)
            return ReleaseRequest.of(row)

    def set_release_notice(self, request_id: int, notice_event_id: str) -> None:
        """The bot's notice of the hold (approvers react to it)."""
        with self.session() as session:
            row = _release_row(session, ReleaseRequestRow.id == request_id, lock=True)
            if row is None:
                raise StoreError(f"no release request R{request_id}")
            row.notice_event_id = notice_event_id

    def release_request(self, request_id: int) -> ReleaseRequest | None:
        with self.session() as session:
            row = _release_row(session, ReleaseRequestRow.id == request_id)
            return ReleaseRequest.of(row) if row is not None else None

    def release_request_for_item(self, item_event_id: str) -> ReleaseRequest | None:
        with self.session() as session:
            row = _release_row(session, ReleaseRequestRow.item_event_id == item_event_id)
            return ReleaseRequest.of(row) if row is not None else None

    def release_request_for_notice(self, notice_event_id: str) -> ReleaseRequest | None:
        with self.session() as session:
            row = _release_row(session, ReleaseRequestRow.notice_event_id == notice_event_id)
            return ReleaseRequest.of(row) if row is not None else None

    def approve_release(
        self,
        request_id: int,
        ledger: Sequence[RelayEntry],
        approver: str,
        audits: Iterable[AuditNote] = (),
    ) -> tuple[ReleaseRequest, list[RelayEntry]]:
        """Release targets: `ledger` holds one ledger entry per target to approve (its
        `target_key` names the target). In one transaction, each named target still held
        becomes approved and its ledger row is written as `add_relays` writes it (a row
        already there under the transaction id is kept), with the audit notes; a target no
        longer held is skipped, its entry not written. So a crash after the commit still
        sends each copy once (the relay re-drives pending rows), and two approvers release
        a target once. Returns the request as stored and the ledger rows of the targets
        this call approved (empty: nothing changed). An entry for another item or a
        target the request lacks, or a transaction id another copy holds, is refused
        (StoreError) with nothing changed."""
        wanted = [e.target_key for e in ledger]
        if len(set(wanted)) != len(wanted):
            raise StoreError(f"R{request_id}: a target is named twice ({wanted})")
        with self.session() as session:
            row = _release_row(session, ReleaseRequestRow.id == request_id, lock=True)
            if row is None:
                raise StoreError(f"no release request R{request_id}")
            by_key = {t.target_key: t for t in row.targets}
            for entry in ledger:
                target = by_key.get(entry.target_key)
                if target is None:
                    raise StoreError(f"{row.item_event_id}: no held target {entry.target_key!r}")
                if (entry.item_event_id, entry.target_room_id) != (
                    row.item_event_id,
                    target.target_room_id,
                ):
                    raise StoreError(
                        f"ledger entry {entry.txn_id} is not the copy of {row.item_event_id} "
                        f"for {entry.target_key}"
                    )
            now, out, approved = utcnow(), [], []
            for entry in ledger:
                target = by_key[entry.target_key]
                if target.state != HoldState.HELD:
                    continue
                target.state = HoldState.APPROVED
                target.decided_by, target.decided_at = approver, now
                out.append(RelayEntry.of(_ledger_row(session, entry, strict=True)))
                approved.append(entry.target_key)
            if approved:
                _append_notes(session, audits, approved)
            session.flush()
            return ReleaseRequest.of(row), out

    def deny_release(
        self,
        request_id: int,
        target_keys: Sequence[str] | None,
        approver: str,
        reasons: Mapping[str, str],
        audits: Iterable[AuditNote] = (),
    ) -> ReleaseRequest:
        """Deny targets still held (`target_keys` None: every one). `reasons`: target key
        -> the reason sealed for that target (`sealing.reason_binding` names the target);
        a target to deny without one, or a key the request lacks, is refused (StoreError)
        with nothing changed. Targets decided meanwhile are left as they are."""
        with self.session() as session:
            row = _release_row(session, ReleaseRequestRow.id == request_id, lock=True)
            if row is None:
                raise StoreError(f"no release request R{request_id}")
            by_key = {t.target_key: t for t in row.targets}
            keys = list(by_key) if target_keys is None else list(dict.fromkeys(target_keys))
            unknown = [k for k in keys if k not in by_key]
            if unknown:
                raise StoreError(f"{row.item_event_id}: no target {', '.join(unknown)}")
            held = [by_key[k] for k in keys if by_key[k].state == HoldState.HELD]
            missing = [t.target_key for t in held if t.target_key not in reasons]
            if missing:
                raise StoreError(f"{row.item_event_id}: no reason for {', '.join(missing)}")
            now = utcnow()
            for target in held:
                target.state = HoldState.DENIED
                target.decided_by, target.decided_at = approver, now
                target.reason = reasons[target.target_key]
            if held:
                _append_notes(session, audits, [t.target_key for t in held])
            session.flush()
            return ReleaseRequest.of(row)

    def due_releases(self, now: datetime) -> list[ReleaseRequest]:
        """Requests with a target still held whose time is up, the longest due first."""
        with self.session() as session:
            rows = session.scalars(
                select(ReleaseRequestRow)
                .where(ReleaseRequestRow.expires_at <= now, _has_held_target())
                .order_by(ReleaseRequestRow.expires_at, ReleaseRequestRow.id)
            )
            return [ReleaseRequest.of(r) for r in rows]

    def expire_release(
        self, request_id: int, now: datetime, audits: Iterable[AuditNote] = ()
    ) -> ReleaseRequest | None:
        """Every target still held becomes expired, if the request is due at `now`; None
        when nothing changed (decided meanwhile, re-held by an edit, or unknown)."""
        with self.session() as session:
            row = _release_row(session, ReleaseRequestRow.id == request_id, lock=True)
            if row is None or row.expires_at > now:
                return None
            return _close_held(session, row, HoldState.EXPIRED, now, audits)

    def withdraw_release(
        self, item_event_id: str, audits: Iterable[AuditNote] = ()
    ) -> ReleaseRequest | None:
        """The item was redacted: every target still held is withdrawn. None when nothing
        changed (no request for the item, or none held)."""
        with self.session() as session:
            row = _release_row(session, ReleaseRequestRow.item_event_id == item_event_id, lock=True)
            if row is None:
                return None
            return _close_held(session, row, HoldState.WITHDRAWN, utcnow(), audits)

    def rehold_release(
        self,
        item_event_id: str,
        contents: Mapping[str, str],
        expires_at: datetime,
        audits: Iterable[AuditNote] = (),
        *,
        label: str | None = None,
        scheme: str | None = None,
        rank: int | None = None,
    ) -> ReleaseRequest | None:
        """The item was edited: every target not approved nor withdrawn (held, denied,
        expired) that `contents` names (target key -> the edited copy, sealed) is held
        again with it, its decision cleared, and the request's time starts again; a held
        target `contents` leaves out is withdrawn (the edit may no longer go there). An
        approved target's copy is edited by the relay, not here: its key in `contents` is
        ignored. `label`, `scheme`, `rank`: the edited item's, when given. A key the request
        lacks is refused (StoreError). None when nothing changed."""
        with self.session() as session:
            row = _release_row(session, ReleaseRequestRow.item_event_id == item_event_id, lock=True)
            if row is None:
                return None
            by_key = {t.target_key: t for t in row.targets}
            unknown = [k for k in contents if k not in by_key]
            if unknown:
                raise StoreError(f"{item_event_id}: no target {', '.join(unknown)}")
            now, changed = utcnow(), []
            reopen = (HoldState.HELD, HoldState.DENIED, HoldState.EXPIRED)
            for target in row.targets:
                if target.state not in reopen:
                    continue
                if target.target_key in contents:
                    target.state, target.content = HoldState.HELD, contents[target.target_key]
                    target.decided_by = target.decided_at = target.reason = None
                elif target.state == HoldState.HELD:
                    target.state, target.decided_at = HoldState.WITHDRAWN, now
                else:
                    continue
                changed.append(target.target_key)
            if not changed:
                return None
            row.expires_at = expires_at
            if label is not None:
                row.label = label
            if scheme is not None:
                row.scheme = scheme
            if rank is not None:
                row.rank = rank
            _append_notes(session, audits, changed)
            session.flush()
            return ReleaseRequest.of(row)

    def pending_releases(self) -> list[ReleaseRequest]:
        """Requests with a target still held, oldest first."""
        with self.session() as session:
            rows = session.scalars(
                select(ReleaseRequestRow)
                .where(_has_held_target())
                .order_by(ReleaseRequestRow.held_at, ReleaseRequestRow.id)
            )
            return [ReleaseRequest.of(r) for r in rows]

    def held_item_ids(self, room_key: str | None = None) -> set[str]:
        """Event ids of the items with a target still held; `room_key`: held for that
        target room (as `released_item_ids` names the rooms copies went to)."""
        query = (
            select(ReleaseRequestRow.item_event_id)
            .join(ReleaseTargetRow, ReleaseTargetRow.request_id == ReleaseRequestRow.id)
            .where(ReleaseTargetRow.state == HoldState.HELD)
        )
        if room_key is not None:
            query = query.where(ReleaseTargetRow.target_key == room_key)
        with self.session() as session:
            return set(session.scalars(query))

    def pending_release_count(self) -> int:
        with self.session() as session:
            count = session.scalar(
                select(func.count()).select_from(ReleaseRequestRow).where(_has_held_target())
            )
            return int(count or 0)

    # ------------------------------------------------------------ resealing, once

    def sealed_with_version(self, version: str) -> tuple[list[IntelItem], list[RelayEntry]]:
        """Items and ledger rows whose sealed values carry sealing version `version`
        (`v1`: from before items and ledger rows had separate sealing contexts)."""
        prefix = f"{version}:%"
        with self.session() as session:
            items = session.scalars(select(IntelItemRow).where(IntelItemRow.text.like(prefix)))
            ledger = session.scalars(select(RelayRow).where(RelayRow.content.like(prefix)))
            return [IntelItem.of(r) for r in items], [RelayEntry.of(r) for r in ledger]

    def reseal(self, items: Mapping[str, str], ledger: Mapping[str, str], note: AuditNote) -> None:
        """Replace sealed values (item event id / ledger txn id -> new sealed value) and
        audit it, in one transaction: all resealed or none."""
        with self.session() as session:
            for item in session.scalars(
                select(IntelItemRow).where(IntelItemRow.event_id.in_(list(items)))
            ):
                item.text = items[item.event_id]
            for row in session.scalars(select(RelayRow).where(RelayRow.txn_id.in_(list(ledger)))):
                row.content = ledger[row.txn_id]
            append_audit(session, note.actor, note.action, note.subject, note.detail)
        for event_id in items:
            self._item_changed(event_id)

    def has_audit_action(self, action: str) -> bool:
        """Whether the audit log holds an entry of this action (the log is hash-chained and
        keyed: an entry cannot be removed unnoticed, so it records a one-off step)."""
        with self.session() as session:
            found = session.scalar(select(AuditRow.id).where(AuditRow.action == action).limit(1))
            return found is not None

    def digest_schedules(self) -> list[DigestSchedule]:
        with self.session() as session:
            rows = session.scalars(
                select(DigestScheduleRow)
                .where(DigestScheduleRow.cancelled_at.is_(None))
                .order_by(DigestScheduleRow.id)
            )
            return [
                DigestSchedule(
                    str(ScheduleKey(Origin.CHAT, r.id)),
                    r.room_key,
                    r.cron,
                    r.window_s,
                    tuple(r.sources),
                    Origin.CHAT,
                )
                for r in rows
            ]

    def add_digest_schedule(
        self, actor: str, room_key: str, cron: str, window_s: int, sources: Iterable[str]
    ) -> DigestSchedule:
        with self.session() as session:
            row = DigestScheduleRow(
                room_key=room_key,
                cron=cron,
                window_s=window_s,
                sources=list(sources),
                created_by=actor,
            )
            session.add(row)
            session.flush()
            key = str(ScheduleKey(Origin.CHAT, row.id))
            append_audit(
                session,
                actor,
                "digest.scheduled",
                key,
                {"room": room_key, "cron": cron, "window_s": window_s, "sources": list(sources)},
            )
            return DigestSchedule(key, room_key, cron, window_s, tuple(sources), Origin.CHAT)

    def cancel_digest_schedule(self, actor: str, key: ScheduleKey) -> bool:
        """Cancel a schedule made in chat (config ones are the config file's)."""
        if key.origin is not Origin.CHAT:
            return False
        with self.session() as session:
            row = session.get(DigestScheduleRow, key.number)
            if row is None or row.cancelled_at is not None:
                return False
            row.cancelled_at = utcnow()
            append_audit(session, actor, "digest.cancelled", str(key), {"room": row.room_key})
            return True

    def last_digest_run(self, schedule_key: str) -> datetime | None:
        with self.session() as session:
            return session.scalar(
                select(DigestRunRow.window_end)
                .where(DigestRunRow.schedule_key == schedule_key)
                .order_by(DigestRunRow.window_end.desc())
                .limit(1)
            )

    def digest_run(self, schedule_key: str, window_end: datetime) -> DigestRun | None:
        with self.session() as session:
            row = _digest_run_row(session, schedule_key, window_end)
            return DigestRun.of(row) if row else None

    def claim_digest_run(
        self,
        schedule_key: str,
        room_key: str,
        window_end: datetime,
        *,
        delayed: bool,
        parts: str | None = None,
    ) -> DigestRun:
        """Record a window as being posted, with its sealed events (`parts`) in the same
        transaction, so a crash after the claim leaves everything needed to post it; an
        existing record is returned as it is (its parts, not these, are what gets posted)."""
        with self.session() as session:
            row = _digest_run_row(session, schedule_key, window_end)
            if row is None:
                row = DigestRunRow(
                    schedule_key=schedule_key,
                    room_key=room_key,
                    window_end=window_end,
                    state=RunState.POSTING,
                    delayed=delayed,
                    parts=parts,
                )
                session.add(row)
                session.flush()
            return DigestRun.of(row)

    def posting_digest_runs(self, schedule_key: str | None = None) -> list[DigestRun]:
        """Runs claimed and not yet recorded as posted (of one schedule, or all): what a
        crash or a failed send left to re-drive, oldest window first."""
        with self.session() as session:
            query = select(DigestRunRow).where(DigestRunRow.state == RunState.POSTING)
            if schedule_key is not None:
                query = query.where(DigestRunRow.schedule_key == schedule_key)
            rows = session.scalars(query.order_by(DigestRunRow.window_end, DigestRunRow.id))
            return [DigestRun.of(r) for r in rows]

    def finish_digest_run(
        self,
        schedule_key: str,
        window_end: datetime,
        state: RunState,
        event_id: str | None,
        audit: AuditNote,
    ) -> None:
        with self.session() as session:
            row = _digest_run_row(session, schedule_key, window_end)
            if row is None:
                row = DigestRunRow(
                    schedule_key=schedule_key,
                    room_key=audit.detail.get("room", ""),
                    window_end=window_end,
                    state=state,
                )
                session.add(row)
            row.state, row.event_id = state, event_id
            if state != RunState.POSTING:
                row.parts = None  # sent or given up: the sealed text is not kept
            append_audit(session, audit.actor, audit.action, audit.subject, audit.detail)

    def relayed_items_to(
        self, room_keys: Iterable[str], start: datetime, end: datetime
    ) -> list[IntelItem]:
        """Items whose copies were sent into these rooms within the window (by item time)."""
        keys = list(room_keys)
        with self.session() as session:
            sub = select(RelayRow.item_event_id).where(
                RelayRow.target_key.in_(keys),
                RelayRow.kind == RelayKind.COPY,
                RelayRow.state == RelayState.SENT,
            )
            rows = session.scalars(
                select(IntelItemRow).where(
                    IntelItemRow.event_id.in_(sub),
                    IntelItemRow.created_at >= start,
                    IntelItemRow.created_at < end,
                    IntelItemRow.redacted_at.is_(None),
                )
            )
            return [IntelItem.of(r) for r in rows]

    def released_item_ids(self, room_key: str) -> set[str]:
        """Event ids of the items whose copies were sent into this room: ids only (no rows,
        no sealed text), for the search, which holds the items and their times already."""
        with self.session() as session:
            return set(
                session.scalars(
                    select(RelayRow.item_event_id).where(
                        RelayRow.target_key == room_key,
                        RelayRow.kind == RelayKind.COPY,
                        RelayRow.state == RelayState.SENT,
                    )
                )
            )

    # ------------------------------------------------------------ chat routes

    def chat_routes(self) -> list[tuple[str, str]]:
        with self.session() as session:
            rows = session.execute(
                select(RouteRow.source_key, RouteRow.target_key).order_by(RouteRow.id)
            )
            return [(a, b) for a, b in rows]

    def add_route(self, actor: str, source: str, target: str) -> bool:
        with self.session() as session:
            exists = session.scalar(
                select(RouteRow.id).where(
                    RouteRow.source_key == source, RouteRow.target_key == target
                )
            )
            if exists is not None:
                return False
            session.add(RouteRow(source_key=source, target_key=target, created_by=actor))
            append_audit(session, actor, "route.added", f"{source}->{target}", {})
            return True

    def remove_route(self, actor: str, source: str, target: str) -> bool:
        with self.session() as session:
            result = session.execute(
                delete(RouteRow).where(RouteRow.source_key == source, RouteRow.target_key == target)
            )
            if not getattr(result, "rowcount", 0):
                return False
            append_audit(session, actor, "route.removed", f"{source}->{target}", {})
            return True

    def close_room(self, actor: str, key: str, removed: list[str]) -> None:
        with self.session() as session:
            row = session.scalar(select(RoomRow).where(RoomRow.key == key))
            if row is not None:
                verified = self._verified_room(session, row) is not None
                row.closed_at = utcnow()
                if verified:  # an unverified row stays refused: closing does not bless it
                    self._sign_room(row)
                session.execute(
                    delete(RouteRow).where(
                        (RouteRow.source_key == key) | (RouteRow.target_key == key)
                    )
                )
                append_audit(session, actor, "room.closed", key, {"removed": removed})


_ITEM_COLUMNS = (
    IntelItemRow.id,
    IntelItemRow.event_id,
    IntelItemRow.room_key,
    IntelItemRow.room_id,
    IntelItemRow.sender,
    IntelItemRow.label,
    IntelItemRow.scheme,
    IntelItemRow.rank,
    IntelItemRow.precedence,
    IntelItemRow.exercise,
    IntelItemRow.topics,
    IntelItemRow.text,
    IntelItemRow.created_at,
    IntelItemRow.origin,
    IntelItemRow.redacted_at,
)


def _ledger_row(session: Session, entry: RelayEntry, *, strict: bool = False) -> RelayRow:
    """The ledger row of `entry`, written unless its transaction id is there already (then
    kept as it is). `strict`: a row there under the id must be this copy (same item,
    target and kind), else StoreError: the id was made for another copy."""
    row = session.scalar(select(RelayRow).where(RelayRow.txn_id == entry.txn_id))
    if row is not None:
        same = (row.item_event_id, row.target_key, row.target_room_id, row.kind) == (
            entry.item_event_id,
            entry.target_key,
            entry.target_room_id,
            entry.kind,
        )
        if strict and not same:
            raise StoreError(f"ledger txn id {entry.txn_id} belongs to another copy")
        return row
    row = RelayRow(
        txn_id=entry.txn_id,
        kind=entry.kind,
        source_event_id=entry.source_event_id,
        item_event_id=entry.item_event_id,
        target_key=entry.target_key,
        target_room_id=entry.target_room_id,
        state=RelayState.PENDING,
        content=entry.content,
    )
    session.add(row)
    session.flush()
    return row


def _release_row(session: Session, where: Any, *, lock: bool = False) -> ReleaseRequestRow | None:
    """One release request with its targets; `lock`: FOR UPDATE on PostgreSQL, held to the
    commit, so every change to a request is serialised (SQLite: the write lock)."""
    query = select(ReleaseRequestRow).where(where)
    if lock:
        query = query.with_for_update()
    return session.scalar(query)


def _has_held_target() -> Any:
    return ReleaseRequestRow.id.in_(
        select(ReleaseTargetRow.request_id).where(ReleaseTargetRow.state == HoldState.HELD)
    )


def _append_notes(session: Session, audits: Iterable[AuditNote], targets: list[str]) -> None:
    """The caller's audit notes, each with the target keys the change made (sorted): the
    caller builds them before it knows which targets were still held."""
    for note in audits:
        detail = {**note.detail, "targets": sorted(targets)}
        append_audit(session, note.actor, note.action, note.subject, detail)


def _close_held(
    session: Session,
    row: ReleaseRequestRow,
    state: HoldState,
    now: datetime,
    audits: Iterable[AuditNote],
) -> ReleaseRequest | None:
    """Every target of `row` still held to `state` (expired, withdrawn); None if none was."""
    closed = [t for t in row.targets if t.state == HoldState.HELD]
    if not closed:
        return None
    for target in closed:
        target.state, target.decided_at = state, now  # decided by nobody: the time, the item
    _append_notes(session, audits, [t.target_key for t in closed])
    session.flush()
    return ReleaseRequest.of(row)


def _numbered_item(row: Row[*tuple[Any, ...]]) -> tuple[int, IntelItem]:
    """(row id, item) from a select of _ITEM_COLUMNS (the same attribute names as a row)."""
    return int(row.id), IntelItem.of(row)


def _item_row(session: Session, event_id: str) -> IntelItemRow | None:
    return session.scalar(select(IntelItemRow).where(IntelItemRow.event_id == event_id))


def _siem_cursor_row(session: Session, *, lock: bool = False) -> SiemCursorRow:
    """The cursor row (revision 0015 makes it); `lock`: FOR UPDATE, held to the commit
    (SQLite's write lock already serialises writers). A row deleted by hand is made again,
    not started and with a new installation id, and that is logged."""
    query = select(SiemCursorRow).where(SiemCursorRow.id == 1)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        log.warning("the SIEM cursor row is missing: made again, with a new installation id")
        row = SiemCursorRow(id=1, installation=str(uuid.uuid4()), failures=0)
        session.add(row)
        session.flush()
    return row


def _planned_change(row: ClearanceRow | None, want: WantedClearance) -> ClearanceChange:
    """What bringing `row` to `want` changes (the fields named as `clearance export`
    names them)."""
    if want.revoked:
        if row is None or row.revoked_at is not None:
            return ClearanceChange(want.user_id, ChangeKind.UNCHANGED)
        return ClearanceChange(want.user_id, ChangeKind.REVOKED)
    if row is None:
        return ClearanceChange(want.user_id, ChangeKind.ADDED)
    fields = []
    if row.nationality != want.nationality:
        fields.append("nationality")
    if {(g.scheme, g.level, g.rank) for g in row.grants} != {
        (g.scheme, g.level, g.rank) for g in want.grants
    }:
        fields.append("levels")
    if {c.caveat for c in row.caveats} != want.caveats:
        fields.append("caveats")
    if row.expires != want.expires:
        fields.append("expires")
    if row.revoked_at is not None:
        fields.append("revoked")
    kind = ChangeKind.CHANGED if fields else ChangeKind.UNCHANGED
    return ClearanceChange(want.user_id, kind, tuple(fields))


def _register_keyed(session: Session) -> bool:
    """Whether the register's old rows were signed once (the audit log says so)."""
    found = session.scalar(select(AuditRow.id).where(AuditRow.action == REGISTER_KEYED).limit(1))
    return found is not None


def _digest_run_row(
    session: Session, schedule_key: str, window_end: datetime
) -> DigestRunRow | None:
    return session.scalar(
        select(DigestRunRow).where(
            DigestRunRow.schedule_key == schedule_key, DigestRunRow.window_end == window_end
        )
    )


def _bot_has_run(session: Session) -> str | None:
    """What shows that a bot has run on this database (None: nothing does). Each of these
    is written only by a running bot, after it keyed the audit log (`key_audit_log` comes
    first at every start); never by the CLI, with or without the data key."""
    for what, model in (
        ("its stored login", BotSessionRow),
        ("its sync position", SyncStateRow),
        ("events it handled", HandledEventRow),
        ("items it relayed", IntelItemRow),
    ):
        if session.scalar(select(func.count()).select_from(model)) != 0:
            return what
    return None


def append_audit(
    session: Session,
    actor: str,
    action: str,
    subject: str | None = None,
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    """Append to the hash chain inside the caller's transaction, so a change and its audit
    entry commit together. Concurrent writers are serialised by the lock on the head row
    (FOR UPDATE; on SQLite the BEGIN IMMEDIATE write lock). With the store's audit key the
    row is HMAC'd (the first keyed row sets the key marker); a keyed log refuses a writer
    without the key."""
    key: bytes | None = session.info.get("audit_key")
    head = session.execute(
        select(AuditHeadRow).where(AuditHeadRow.id == 1).with_for_update()
    ).scalar_one_or_none()
    keyed_from = head.keyed_from if head is not None else None
    if keyed_from is not None and key is None:
        raise StoreError(
            "the audit log is keyed with the data key: set it (storage.data_key_env) to write"
        )
    if (
        keyed_from is not None
        and key is not None
        and not session.info.get(REKEYING)
        and not head_seal_ok(head, key)  # type: ignore[arg-type]  # keyed_from is set: head is not None
    ):
        # Another key: writing on would seal the marker under it and break the log for
        # the real key. Only a rotation (`finish_data_rotation`, REKEYING) moves the marker.
        raise StoreError(
            "the data key (storage.data_key_env) is not the key of this audit log: nothing written"
        )
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
    session.info[_AUDITED] = True
    if key is not None and keyed_from is None:
        keyed_from = row.id
    row.hash = audit_hash(row, key)
    seal = (
        _key_seal(key, keyed_from, row.id, row.hash)
        if key is not None and keyed_from is not None
        else None
    )
    if head is None:
        session.add(
            AuditHeadRow(id=1, last_id=row.id, hash=row.hash, keyed_from=keyed_from, key_seal=seal)
        )
    else:
        head.last_id, head.hash = row.id, row.hash
        head.keyed_from, head.key_seal = keyed_from, seal or head.key_seal
    return AuditEntry.of(row)


def audit_key_from(data_key: str) -> bytes:
    """The audit chain's HMAC key, derived from the data key (its own HKDF purpose)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"liaison-bot audit chain"
    ).derive(data_key.encode())


def register_public_key(data_key: str) -> str:
    """The public key the homeserver gate verifies register rows with, derived from the
    data key as the bot's signing key is (for the gate's config: it is not a secret)."""
    return RegisterSigner.from_audit_key(audit_key_from(data_key)).text


def _key_seal(key: bytes, keyed_from: int, last_id: int, head_hash: str) -> str:
    """The head's seal: an HMAC of the key marker AND of the newest row (its id and hash).
    Why the newest row too: without it, someone with write access to the database could
    delete the newest rows (a `keys.exported`, say) and point the head at the row before
    them, and the chain would verify; moving the head now needs the key."""
    message = f"keyed-from:{keyed_from};head:{last_id}:{head_hash}"
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def head_seal_ok(head: AuditHeadRow, key: bytes) -> bool:
    """Whether the keyed head's seal (marker and newest row) is `key`'s."""
    assert head.keyed_from is not None
    expected = _key_seal(key, head.keyed_from, head.last_id, head.hash)
    return hmac.compare_digest(head.key_seal or "", expected)


def audit_hash(row: AuditRow, key: bytes | None = None) -> str:
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
    data = (row.prev_hash + body).encode("utf-8")
    if key is not None:
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def chain_anchor(key: bytes) -> hmac.HMAC:
    """The running HMAC that an `audit.rekeyed` row commits to: fed every row before it
    (`add_to_anchor`), under the new key. Why: the rows before a data key rotation stay as
    they were written (the SIEM holds their hashes), yet with the new key alone a change to
    any of them is still found."""
    return hmac.new(key, b"liaison-bot audit anchor\n", hashlib.sha256)


def add_to_anchor(anchor: hmac.HMAC, row: AuditRow) -> None:
    """One row into the anchor: its id, its contents and link (the unkeyed hash covers
    both) and the hash stored with it."""
    anchor.update(f"{row.id}:{audit_hash(row)}:{row.hash}\n".encode("ascii"))
