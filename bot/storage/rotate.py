"""Key rotation, the database side: every value sealed under the data key or the pickle
key moved to a new key, in batches, resumable (`liaison-bot keys rotate`).

Why this shape: a database can hold hundreds of thousands of sealed items, too many for one
transaction, and a rotation can be cut off (a kill, a crash, a lost connection). So each
batch is its own transaction, and every value is opened with the new key first and the old
one second: whatever was committed is under the new key, the rest is still under the old
one, never under neither. Running the same rotation again moves what is left. Nothing new is
stored to say how far it got: the values say it themselves, and the audit log records the
start (`keys.rotating`, naming the new register key for a data key rotation, so a rotation
resumed with a different key is refused) and the end (`keys.rotated`).

The audit log is not re-hashed (the SIEM holds its hashes): a data key rotation ends with one
`audit.rekeyed` row, the first under the new key, which carries the new key's HMAC over every
row before it (`store.chain_anchor`). `Store.verify_audit` with the new key checks the rows
before it through that anchor and the rows after it one by one. That last transaction also
seals the log's key marker under the new key: from then on only the new key writes or
verifies it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute

from bot.storage.gate_settings import resign_gate_settings
from bot.storage.models import (
    AuditHeadRow,
    AuditRow,
    ClearanceRow,
    HaLeaderRow,
    ReleaseTargetRow,
    RoomRow,
)
from bot.storage.records import ClearanceRecord, RegisterSigner, RoomRecord
from bot.storage.sealing import (
    SealError,
    hold_binding,
    hold_sealer,
    reason_binding,
    reason_sealer,
    resealed,
)
from bot.storage.store import (
    REKEYING,
    Store,
    add_to_anchor,
    append_audit,
    chain_anchor,
    head_seal_ok,
)

BATCH = 500  # values per transaction, unless the command says otherwise
ROTATING, ROTATED = "keys.rotating", "keys.rotated"

# The progress line: what, how many done of how many ("intel items 4 000/12 000").
Progress = Callable[[str, int, int], None]


class RotationError(Exception):
    """The rotation cannot go on; the message says why and what to do. Nothing was changed
    by the step that raised it."""


@dataclass(frozen=True)
class Sealed:
    """One kind of sealed value: a column of a table, and how one value moves to the new key.

    `move(row)` returns the value sealed under the new key, None when it already opens with
    the new key, and raises SealError when it opens with neither. `droppable`: such a row is
    a cache the bot rebuilds (room snapshots), deleted rather than refused."""

    what: str
    model: type[Any]
    key: str
    column: str
    move: Callable[[Any], str | None]
    droppable: bool = False

    def _key(self) -> InstrumentedAttribute[Any]:
        attr: InstrumentedAttribute[Any] = getattr(self.model, self.key)
        return attr

    def _column(self) -> InstrumentedAttribute[Any]:
        attr: InstrumentedAttribute[Any] = getattr(self.model, self.column)
        return attr


def release_sealed(old_key: str, new_key: str) -> list[Sealed]:
    """The sealed columns of national release control (held copies, denial reasons), each
    in its context and bound to its item and target as the service seals them."""
    holds = hold_sealer(old_key), hold_sealer(new_key)
    reasons = reason_sealer(old_key), reason_sealer(new_key)

    def hold(row: ReleaseTargetRow) -> str | None:
        binding = hold_binding(row.request.item_event_id, row.target_key, row.target_room_id)
        return resealed(*holds, row.content, binding)

    def reason(row: ReleaseTargetRow) -> str | None:
        assert row.reason is not None  # rows without one are not read (`_page`)
        binding = reason_binding(row.request.item_event_id, row.target_key)
        return resealed(*reasons, row.reason, binding)

    return [
        Sealed("held release copies", ReleaseTargetRow, "id", "content", hold),
        Sealed("release denial reasons", ReleaseTargetRow, "id", "reason", reason),
    ]


def format_count(n: int) -> str:
    """4000 as "4 000": progress lines read at a glance."""
    return f"{n:,}".replace(",", " ")


def lease_holder(store: Store) -> str | None:
    """The node of a high-availability pair that holds the lease now, if one does: a bot is
    running on this database and a rotation under it would leave it unable to open what it
    reads."""
    with store.session() as session:
        row = session.get(HaLeaderRow, 1)
        if row is None or not row.holder:
            return None
        until = row.lease_until if row.lease_until.tzinfo else row.lease_until.replace(tzinfo=UTC)
        return row.holder if until > datetime.now(UTC) else None


def unfinished(store: Store, which: str) -> dict[str, Any] | None:
    """The detail of the newest `keys.rotating` row for `which` ("data" or "pickle") that
    no `keys.rotated` row follows: a rotation that was cut off."""
    with store.session() as session:
        rows = session.scalars(
            select(AuditRow)
            .where(AuditRow.action.in_((ROTATING, ROTATED)))
            .order_by(AuditRow.id.desc())
        )
        for row in rows:
            if row.detail.get("key") == which:
                return dict(row.detail) if row.action == ROTATING else None
    return None


def _page(session: Any, kind: Sealed, after: Any, size: int) -> list[Any]:
    """The next `size` rows holding a value, in key order, after the key `after`."""
    query = select(kind.model).where(kind._column().is_not(None))
    if after is not None:
        query = query.where(kind._key() > after)
    return list(session.scalars(query.order_by(kind._key()).limit(size)))


def _total(store: Store, kind: Sealed) -> int:
    with store.session() as session:
        count = session.scalar(
            select(func.count()).select_from(kind.model).where(kind._column().is_not(None))
        )
        return int(count or 0)


def check(store: Store, kinds: Sequence[Sealed], size: int = BATCH) -> dict[str, int]:
    """Before anything is changed: every value opens with the old key or the new one (else
    RotationError naming the first few that do not, nothing changed). Returns, per kind,
    how many values are still under the old key."""
    waiting: dict[str, int] = {}
    for kind in kinds:
        bad: list[str] = []
        left, after = 0, None
        while True:
            with store.session() as session:
                rows = _page(session, kind, after, size)
                for row in rows:
                    try:
                        if kind.move(row) is not None:
                            left += 1
                    except SealError:
                        if not kind.droppable:
                            bad.append(str(getattr(row, kind.key)))
            if not rows:
                break
            after = getattr(rows[-1], kind.key)
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise RotationError(
                f"{len(bad)} of the {kind.what} open(s) with neither the current key nor the "
                f"new one ({shown}): altered in the database, left by a rotation to a "
                "different key (finish that one with its key), or in a sealing format from "
                "before an upgrade (the bot reseals those at its next start: start it once "
                "with the current key, stop it, rotate). Nothing was changed."
            )
        waiting[kind.what] = left
    return waiting


def reseal(
    store: Store, kinds: Sequence[Sealed], progress: Progress, size: int = BATCH
) -> dict[str, int]:
    """Move every value to the new key, a transaction per batch, saying progress after each
    committed batch. Returns, per kind, how many values this run moved (a value already
    under the new key, from a run that was cut off, is left as it is)."""
    moved: dict[str, int] = {}
    for kind in kinds:
        total, done, count, after = _total(store, kind), 0, 0, None
        while True:
            with store.session() as session:  # one batch, one transaction
                rows = _page(session, kind, after, size)
                for row in rows:
                    try:
                        new = kind.move(row)
                    except SealError:
                        if not kind.droppable:  # `check` found none: written since
                            raise RotationError(
                                f"{kind.what} {getattr(row, kind.key)} opens with neither key "
                                "(written into the database during the rotation?); the batch "
                                "was not changed"
                            ) from None
                        session.delete(row)
                        continue
                    if new is not None:
                        setattr(row, kind.column, new)
                        count += 1
            if not rows:
                break
            after = getattr(rows[-1], kind.key)
            done += len(rows)
            progress(kind.what, done, total)  # committed: under the new key from here on
        moved[kind.what] = count
    return moved


def resign_register(
    store: Store, old_audit_key: bytes, new_audit_key: bytes, progress: Progress, size: int = BATCH
) -> tuple[int, int]:
    """Sign every register row that verifies under the old key again under the new one, a
    transaction per batch. A row that verifies under neither (changed outside the bot, or
    from before rows were signed) keeps its signature: it was refused and stays refused,
    a rotation never vouches for it. Returns (rows signed, rows left refused)."""
    old = RegisterSigner.from_audit_key(old_audit_key)
    new = RegisterSigner.from_audit_key(new_audit_key)
    signed = refused = 0
    tables: tuple[tuple[Any, str], ...] = ((ClearanceRow, "clearances"), (RoomRow, "managed rooms"))
    for model, what in tables:
        with store.session() as session:
            total = int(session.scalar(select(func.count()).select_from(model)) or 0)
        done, after = 0, 0
        while True:
            with store.session() as session:
                rows = list(
                    session.scalars(
                        select(model).where(model.id > after).order_by(model.id).limit(size)
                    )
                )
                if not rows:
                    break
                for row in rows:
                    record: Any
                    verifies: tuple[Callable[[Any, str | None], bool], ...]
                    sign: Callable[[Any], str]
                    if isinstance(row, ClearanceRow):
                        record = ClearanceRecord.of(row)
                        verifies = new.clearance_verifies, old.clearance_verifies
                        sign = new.sign_clearance
                    else:
                        record = RoomRecord.of(row)
                        verifies = new.room_verifies, old.room_verifies
                        sign = new.sign_room
                    if verifies[0](record, row.signature):
                        continue
                    if verifies[1](record, row.signature):
                        row.signature = sign(record)
                        signed += 1
                    else:
                        refused += 1
                after = rows[-1].id
            done += len(rows)
            progress(what, done, total)
    # The settings the bot publishes for the gate, signed the same way: re-signed here, so
    # the gate given the new register_key reads them before the bot's next start.
    settings_signed, settings_refused = resign_gate_settings(store, old, new)
    return signed + settings_signed, refused + settings_refused


def marker_sealed_with(store: Store, key: bytes) -> bool | None:
    """Whether the audit log's key marker is sealed under `key`; None if the log is not
    keyed at all (no row was written with a data key yet)."""
    with store.session() as session:
        head = session.get(AuditHeadRow, 1)
        if head is None or head.keyed_from is None:
            return None
        return head_seal_ok(head, key)


def finish_data_rotation(
    new_store: Store, actor: str, rekeyed: dict[str, Any], rotated: dict[str, Any]
) -> None:
    """The rotation's last step, one transaction: the `audit.rekeyed` row (the first under
    the new key, with the anchor over every row before it and `rekeyed`), the marker sealed
    under the new key, and the `keys.rotated` row. `new_store` holds the new audit key."""
    key = new_store.audit_key
    if key is None:
        raise RotationError("rekeying the audit log needs the new data key")
    with new_store.session() as session:
        session.info[REKEYING] = True
        # The head locked first: no row can be added between the anchor and the rekey row.
        session.execute(select(AuditHeadRow).where(AuditHeadRow.id == 1).with_for_update())
        anchor = chain_anchor(key)
        for row in session.scalars(select(AuditRow).order_by(AuditRow.id)):
            add_to_anchor(anchor, row)
        append_audit(
            session, actor, "audit.rekeyed", None, {**rekeyed, "anchor": anchor.hexdigest()}
        )
        append_audit(session, actor, "keys.rotated", None, rotated)
