"""The one fake of commands.services.Services for tests, an audit port that keeps nothing
and a messenger port for services that must send nothing. FakeServices subclasses the port, so mypy checks each method against it (and
refuses to build one with a method missing); a test in tests/test_fuzz_commands.py also
checks it answers every method of the port."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from bot.services.ports import Audit, Device, Messenger
from commands.context import CommandError, Invocation
from commands.document import Document, doc, para
from commands.services import (
    AuditInfo,
    ClearanceInfo,
    InviteOutcome,
    RevokeOutcome,
    RoomSummary,
    RouteSummary,
    Services,
    StatusInfo,
    VerdictInfo,
)
from policy import Decision, MarkingError, Room, make_room, parse_marking
from policy.ids import EventId, RoomKey, UserId


async def _no_audit(actor: str, action: str, subject: str | None, detail: dict[str, Any]) -> None:
    return None


no_audit: Audit = _no_audit  # the audit port, keeping nothing


class NoMessenger(Messenger):
    """The messenger port of a service a test uses for something else: any use is a
    failure."""

    @property
    def user_id(self) -> str:
        raise AssertionError("the messenger is not used here")

    async def send(
        self,
        room_id: str,
        content: dict[str, Any],
        tx_id: str | None = None,
        also_to: Sequence[Device] = (),
    ) -> EventId:
        raise AssertionError(f"sent into {room_id}")

    async def send_notice(
        self,
        room_id: str,
        document: Document,
        reply_to: str | None = None,
        also_to: Sequence[Device] = (),
        tx_id: str | None = None,
    ) -> EventId:
        raise AssertionError(f"sent a notice into {room_id}")

    async def redact(
        self, room_id: str, event_id: str, reason: str, tx_id: str | None = None
    ) -> None:
        raise AssertionError(f"redacted {event_id}")

    async def alert_admins(self, document: Document, tx_id: str | None = None) -> None:
        raise AssertionError(f"alerted the admins: {document.plain}")

    async def sender_of(self, room_id: str, event_id: str) -> str | None:
        raise AssertionError(f"asked who sent {event_id}")


@dataclass
class FakeServices(Services):
    """Every service answers, echoing user input into its documents (so escaping is
    exercised); a handler that still fails has a bug of its own. Users whose id starts with
    `@none` have no clearance on record; grants and audit entries are kept for inspection."""

    audits: list[tuple[str, str, str | None, dict[str, Any]]] = field(default_factory=list)
    grants: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)

    async def clearance(self, user_id: UserId) -> ClearanceInfo | None:
        return None if user_id.startswith("@none") else _record(user_id)

    async def clearances(self) -> Sequence[ClearanceInfo]:
        return [_record("@a:b"), _record('@<img src=x>:"y"')]

    async def grant(
        self,
        actor: UserId,
        user_id: UserId,
        level: str,
        *,
        nationality: str | None,
        expires: date | None,
        caveats: Sequence[str],
    ) -> ClearanceInfo:
        try:
            parse_marking(level)
        except MarkingError as exc:
            raise CommandError(f"LEVEL: {exc}") from None
        kw = {"nationality": nationality, "expires": expires, "caveats": caveats}
        self.grants.append((actor, user_id, level, kw))
        return _record(user_id)

    async def revoke(self, actor: UserId, user_id: UserId, scope: str | None) -> RevokeOutcome:
        return RevokeOutcome(_record(user_id), (scope or "all",))

    async def confirm_identity(self, actor: UserId, user_id: UserId, key: str) -> ClearanceInfo:
        return _record(user_id, key)

    async def digest_now(
        self,
        actor: UserId,
        room_key: RoomKey,
        roles: frozenset[Any],
        cause: EventId | None = None,
    ) -> str:
        return f"{room_key} <script>"

    async def digest_schedule(
        self,
        actor: UserId,
        room_key: RoomKey,
        cron: str,
        window: str | None,
        sources: Sequence[str] | None,
    ) -> str:
        return f"{room_key} {cron} {window} {sources}"

    async def digest_list(self) -> list[str]:
        return ["cfg-1: <b>nato-s</b>"]

    async def digest_cancel(self, actor: UserId, key: str) -> None:
        if not key.startswith("db-"):
            raise CommandError(f"no schedule {key!r}")

    async def relay_message(
        self, invocation: Invocation, targets: Sequence[RoomKey], message: str
    ) -> Document:
        return doc(para("Relayed to ", ", ".join(targets), ": ", message))

    async def release_approve(
        self, invocation: Invocation, request: str, targets: Sequence[RoomKey]
    ) -> Document:
        return doc(para("Approved ", request, " for ", ", ".join(targets) or "every target"))

    async def release_deny(self, invocation: Invocation, request: str, reason: str) -> Document:
        return doc(para("Denied ", request, ": ", reason))

    async def release_pending(self, invocation: Invocation) -> Document:
        return doc(para("Nothing is held for ", invocation.sender))

    async def invite(self, actor: UserId, user_id: UserId, room_key: RoomKey) -> InviteOutcome:
        if await self.clearance(user_id) is None:
            refusal = Decision(
                False, (f"no clearance on record for {user_id}",), codes=("clearance.none",)
            )
            return InviteOutcome(refusal, False)
        allowed = room_key == "nato-s"
        checked = Decision(allowed, (f"{user_id} <i>checked</i>",), codes=("fake.checked",))
        return InviteOutcome(checked, allowed)

    async def rooms(self) -> Sequence[RoomSummary]:
        return [RoomSummary("nato-s", "NATO <script>", "NATO SECRET", 3, 2, "!r:x")]

    async def routes(self) -> Sequence[RouteSummary]:
        return [RouteSummary("deu", ("nato-s", "<eu>"))]

    async def audit_recent(self, limit: int) -> Sequence[AuditInfo]:
        return [_Audit(1, datetime(2026, 1, 1, tzinfo=UTC), "@a:b", "x<y", None, {"e": "<&>"})]

    async def audit_verify(self) -> VerdictInfo:
        return _Verdict(True, 3, "3 entries <ok>")

    async def status(self) -> StatusInfo:
        return StatusInfo(3700.0, None, 3, 0, ("cfg-1 <x>",), "DEV<ICE>")

    async def search(
        self,
        actor: UserId,
        room_key: RoomKey,
        words: Sequence[str],
        topic: str | None,
        since: str | None,
        exercise: bool,
    ) -> Document:
        return doc(para("Searched ", room_key, " for ", " ".join(words), f" {topic} {since}"))

    async def room_create(
        self,
        actor: UserId,
        key: RoomKey,
        name: str,
        label_text: str,
        audience: Sequence[str] | None,
    ) -> Any:
        try:
            label = parse_marking(label_text)
        except MarkingError as exc:
            raise CommandError(f"LABEL: {exc}") from None
        return _Room(key, name, label.banner, _Policy(label.rank))

    async def room_close(self, actor: UserId, key: RoomKey) -> list[str]:
        return [f"@{key}<x>:y"]

    async def route_change(
        self, actor: UserId, source: RoomKey, target: RoomKey, add: bool
    ) -> None:
        if source == target:
            raise CommandError("a room cannot route to itself")

    async def room_policies(self) -> list[tuple[str, str, Room]]:
        nato = make_room(parse_marking("NATO SECRET"), None)
        return [("nato-s", "NATO <script>", nato)]

    async def known_caveats(self) -> Sequence[str]:
        return ["<ATOMAL>"]

    async def audit(
        self, actor: UserId, action: str, subject: str | None, detail: dict[str, Any]
    ) -> None:
        self.audits.append((actor, action, subject, detail))


@dataclass(frozen=True)
class _Policy:
    rank: int


@dataclass(frozen=True)
class _Room:
    key: str
    name: str
    banner: str
    policy: _Policy


@dataclass(frozen=True)
class _Grant:
    scheme: str = "NATO"
    level: str = "NATO SECRET"
    rank: int = 3


@dataclass(frozen=True)
class _Record:
    user_id: str
    nationality: str = "DEU"
    grants: tuple[_Grant, ...] = (_Grant(),)
    caveats: frozenset[str] = frozenset({"<ATOMAL>"})
    expires: date | None = date(2027, 1, 1)
    revoked_at: datetime | None = None
    identity_key: str | None = "AAAABBBB<>"
    identity_pending: str | None = None


def _record(user_id: str, pending: str | None = None) -> _Record:
    return _Record(user_id, identity_pending=pending)


@dataclass(frozen=True)
class _Audit:
    id: int
    at: datetime
    actor: str
    action: str
    subject: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class _Verdict:
    intact: bool
    entries: int
    message: str
