"""Storage: one package owns every table and every query, so no SQL lives anywhere else.

- `models`: the SQLAlchemy 2 tables and the engine settings per backend;
- `records`: the frozen values the store hands out;
- `store`: `Store`, small intention-named functions, each one transaction (synchronous:
  the bot runs them in a worker thread, `in_thread`, so the event loop never blocks);
- `sealing`: encryption of message text at rest; `migrate`: Alembic, from our CLI.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from bot.storage.models import (
    AuditHeadRow,
    AuditRow,
    Base,
    BotSessionRow,
    ClearanceCaveatRow,
    ClearanceRow,
    CrossSigningRow,
    DigestRunRow,
    DigestScheduleRow,
    DirectRoomRow,
    GateSettingsRow,
    GrantRow,
    HaLeaderRow,
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
    UTCDateTime,
    make_engine,
    schema_is_current,
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
    HeldTarget,
    HoldState,
    IntelItem,
    NewHeldTarget,
    NewHold,
    Origin,
    PendingEvent,
    PendingOutcome,
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
    parse_release_id,
)
from bot.storage.store import (
    Store,
    append_audit,
    audit_hash,
    audit_key_from,
)

P = ParamSpec("P")
T = TypeVar("T")


async def in_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run one store function in a worker thread: database work never blocks the loop.

    A caller cancelled meanwhile still waits for the call to end before it sees the
    cancellation. A thread cannot be stopped, so without this a stopped task (the bot's
    `close`) returned while its write went on: the sync token and room snapshots were
    seen changing after the bot had stopped."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    future = asyncio.get_running_loop().run_in_executor(None, call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


__all__ = [
    "AuditEntry",
    "AuditHeadRow",
    "AuditNote",
    "AuditRow",
    "AuditVerdict",
    "Base",
    "BotSession",
    "BotSessionRow",
    "ChainedAudit",
    "ClearanceCaveatRow",
    "ClearanceRecord",
    "ClearanceRow",
    "CrossSigningRow",
    "DigestRun",
    "DigestRunRow",
    "DigestSchedule",
    "DigestScheduleRow",
    "DirectRoomRow",
    "GateSettingsRow",
    "GrantRecord",
    "GrantRow",
    "HaLeaderRow",
    "HandledEventRow",
    "HeldTarget",
    "HoldState",
    "IntelItem",
    "IntelItemRow",
    "NewHeldTarget",
    "NewHold",
    "Origin",
    "PendingEvent",
    "PendingEventRow",
    "PendingOutcome",
    "RelayEntry",
    "RelayKind",
    "RelayRow",
    "RelayState",
    "ReleaseRequest",
    "ReleaseRequestRow",
    "ReleaseTargetRow",
    "RoomRecord",
    "RoomRow",
    "RoomSnapshotRow",
    "RouteRow",
    "RunState",
    "ScheduleKey",
    "SiemCursor",
    "SiemCursorRow",
    "SiemPosition",
    "Store",
    "StoreError",
    "SyncStateRow",
    "UTCDateTime",
    "append_audit",
    "audit_hash",
    "audit_key_from",
    "in_thread",
    "make_engine",
    "parse_release_id",
    "schema_is_current",
]
