"""What command handlers may ask of the bot: small protocols that `bot/` implements.

Handlers depend on these shapes, never on nio or the database, so commands can be read and
tested without a homeserver. Errors a user should see are raised as
`commands.registry.CommandError` by the implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Protocol

from commands.context import Invocation
from policy import Decision, Room
from policy.ids import EventId, RoomKey, UserId

if TYPE_CHECKING:
    from commands.document import Document


class GrantInfo(Protocol):
    @property
    def scheme(self) -> str: ...
    @property
    def level(self) -> str: ...
    @property
    def rank(self) -> int: ...


class ClearanceInfo(Protocol):
    @property
    def user_id(self) -> str: ...
    @property
    def nationality(self) -> str: ...
    @property
    def grants(self) -> Sequence[GrantInfo]: ...
    @property
    def caveats(self) -> frozenset[str]: ...
    @property
    def expires(self) -> date | None: ...
    @property
    def revoked_at(self) -> datetime | None: ...
    @property
    def identity_key(self) -> str | None: ...
    @property
    def identity_pending(self) -> str | None: ...


class AuditInfo(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def at(self) -> datetime: ...
    @property
    def actor(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def subject(self) -> str | None: ...
    @property
    def detail(self) -> dict[str, Any]: ...


class VerdictInfo(Protocol):
    @property
    def intact(self) -> bool: ...
    @property
    def entries(self) -> int: ...
    @property
    def message(self) -> str: ...


@dataclass(frozen=True, slots=True)
class RoomSummary:
    key: str
    name: str
    banner: str
    rank: int
    members: int
    room_id: str | None


@dataclass(frozen=True, slots=True)
class RouteSummary:
    source: str
    targets: tuple[str, ...]
    origin: str = "config"


@dataclass(frozen=True, slots=True)
class RevokeOutcome:
    clearance: ClearanceInfo
    removed_from: tuple[str, ...]  # room keys the user was removed from


@dataclass(frozen=True, slots=True)
class InviteOutcome:
    decision: Decision
    invited: bool


@dataclass(frozen=True, slots=True)
class StatusInfo:
    uptime_s: float
    sync_lag_s: float | None
    rooms: int
    pending_relays: int
    next_digests: tuple[str, ...]
    device_id: str


class ClearancePort(Protocol):
    """The register: `!clearance …`, `!whoami`, `!invite`."""

    async def clearance(self, user_id: UserId) -> ClearanceInfo | None: ...

    async def clearances(self) -> Sequence[ClearanceInfo]: ...

    async def grant(
        self,
        actor: UserId,
        user_id: UserId,
        level: str,
        *,
        nationality: str | None,
        expires: date | None,
        caveats: Sequence[str],
    ) -> ClearanceInfo: ...

    async def revoke(self, actor: UserId, user_id: UserId, scope: str | None) -> RevokeOutcome: ...

    async def confirm_identity(self, actor: UserId, user_id: UserId, key: str) -> ClearanceInfo: ...

    async def invite(self, actor: UserId, user_id: UserId, room_key: RoomKey) -> InviteOutcome: ...


class RoomPort(Protocol):
    """Rooms and routes: `!rooms`, `!routes`, `!room …`, `!route …`, `!label …`."""

    async def room_create(
        self,
        actor: UserId,
        key: RoomKey,
        name: str,
        label_text: str,
        audience: Sequence[str] | None,
    ) -> Any: ...

    async def room_close(self, actor: UserId, key: RoomKey) -> list[str]: ...

    async def route_change(
        self, actor: UserId, source: RoomKey, target: RoomKey, add: bool
    ) -> None: ...

    async def room_policies(self) -> list[tuple[str, str, Room]]: ...

    async def known_caveats(self) -> Sequence[str]: ...

    async def rooms(self) -> Sequence[RoomSummary]: ...

    async def routes(self) -> Sequence[RouteSummary]: ...


class IntelPort(Protocol):
    """Tagged intelligence: `!relay`, `!search`."""

    async def relay_message(
        self, invocation: Invocation, targets: Sequence[RoomKey], message: str
    ) -> Document: ...

    async def search(
        self,
        actor: UserId,
        room_key: RoomKey,
        words: Sequence[str],
        topic: str | None,
        since: str | None,
        exercise: bool,
    ) -> Document: ...


class DigestPort(Protocol):
    """`!digest …`."""

    async def digest_now(
        self,
        actor: UserId,
        room_key: RoomKey,
        roles: frozenset[Any],
        cause: EventId | None = None,
    ) -> str:
        """Post the room's digest now; the room key. `cause`: the command's event, which
        fixes the parts' transaction ids (handled again, it posts no second digest)."""
        ...

    async def digest_schedule(
        self,
        actor: UserId,
        room_key: RoomKey,
        cron: str,
        window: str | None,
        sources: Sequence[str] | None,
    ) -> str: ...

    async def digest_list(self) -> list[str]: ...

    async def digest_cancel(self, actor: UserId, key: str) -> None: ...


class ReleasePort(Protocol):
    """National release control: `!release approve|deny|pending`. Who may decide (an
    approver of the route, not the sender, cleared for the item, on a trusted device) is
    the implementation's to judge; a refusal comes back as the reply, audited there."""

    async def release_approve(
        self, invocation: Invocation, request: str, targets: Sequence[RoomKey]
    ) -> Document: ...

    async def release_deny(self, invocation: Invocation, request: str, reason: str) -> Document:
        """`reason` as typed (quotes included); the sender is told it."""
        ...

    async def release_pending(self, invocation: Invocation) -> Document:
        """What waits: in a managed room, the items held from it; in a direct chat, all
        (only those the asker is cleared for, either way)."""
        ...


class AuditPort(Protocol):
    """`!audit …`, `!status`, and the dispatcher's own audit rows."""

    async def audit_recent(self, limit: int) -> Sequence[AuditInfo]: ...

    async def audit_verify(self) -> VerdictInfo: ...

    async def status(self) -> StatusInfo: ...

    async def audit(
        self, actor: UserId, action: str, subject: str | None, detail: dict[str, Any]
    ) -> None: ...


class Services(ClearancePort, RoomPort, IntelPort, DigestPort, ReleasePort, AuditPort, Protocol):
    """Everything a command may ask; each group above is one port, served by one service
    in bot/ (through bot/services/command_ports.py)."""
