"""The command ports (commands.services.Services) over the services: a thin adapter, no
rules of its own. Each method hands over to the service that owns the concern, so "how
is an invite gated" is answered in membership.py, not here."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime

from bot.services.digest import DigestService
from bot.services.membership import Membership
from bot.services.ports import Audit
from bot.services.relay import RelayEngine, Source
from bot.services.release import ReleaseDesk, parse_reason
from bot.services.rooms import ManagedRoom, RoomDirectory
from bot.services.search import Inventory
from bot.storage import AuditEntry, AuditVerdict, ClearanceRecord, Store, in_thread
from commands.context import CommandError, Invocation, Role
from commands.document import Document
from commands.services import InviteOutcome, RevokeOutcome, RoomSummary, RouteSummary, StatusInfo
from policy import Room
from policy.ids import EventId, RoomKey, UserId


class CommandPorts:
    def __init__(
        self,
        store: Store,
        caveats: Sequence[str],
        rooms: RoomDirectory,
        membership: Membership,
        relay: RelayEngine,
        digests: DigestService,
        inventory: Inventory,
        audit: Audit,
        sync_age: Callable[[], float | None],
        device_id: Callable[[], str],
        started_at: float,
    ) -> None:
        self.store = store
        self.caveats = caveats
        self.directory = rooms
        self.membership = membership
        self.relay = relay
        self.digests = digests
        self.inventory = inventory
        self.audit: Audit = audit
        self.sync_age = sync_age
        self.device_id = device_id
        self.started_at = started_at
        self.release: ReleaseDesk | None = None  # national release control (the wiring's)

    # ------------------------------------------------------------ clearances

    async def clearance(self, user_id: UserId) -> ClearanceRecord | None:
        return await in_thread(self.store.clearance, user_id)

    async def clearances(self) -> Sequence[ClearanceRecord]:
        return await in_thread(self.store.clearances)

    async def grant(
        self,
        actor: UserId,
        user_id: UserId,
        level: str,
        *,
        nationality: str | None,
        expires: date | None,
        caveats: Sequence[str],
    ) -> ClearanceRecord:
        return await self.membership.grant(
            actor, user_id, level, nationality=nationality, expires=expires, caveats=caveats
        )

    async def revoke(self, actor: UserId, user_id: UserId, scope: str | None) -> RevokeOutcome:
        return await self.membership.revoke(actor, user_id, scope)

    async def confirm_identity(self, actor: UserId, user_id: UserId, key: str) -> ClearanceRecord:
        return await self.membership.confirm_identity(actor, user_id, key)

    async def invite(self, actor: UserId, user_id: UserId, room_key: RoomKey) -> InviteOutcome:
        return await self.membership.invite(actor, user_id, room_key)

    # ------------------------------------------------------------ rooms and routes

    async def room_create(
        self,
        actor: UserId,
        key: RoomKey,
        name: str,
        label_text: str,
        audience: Sequence[str] | None,
    ) -> ManagedRoom:
        return await self.directory.create(actor, key, name, label_text, audience)

    async def room_close(self, actor: UserId, key: RoomKey) -> list[str]:
        return await self.directory.close(actor, key)

    async def route_change(
        self, actor: UserId, source: RoomKey, target: RoomKey, add: bool
    ) -> None:
        await self.directory.change_route(actor, source, target, add)

    async def room_policies(self) -> list[tuple[str, str, Room]]:
        return [(m.key, m.name, m.policy) for m in self.directory.by_key.values()]

    async def known_caveats(self) -> Sequence[str]:
        return self.caveats

    async def rooms(self) -> Sequence[RoomSummary]:
        return self.directory.summaries()

    async def routes(self) -> Sequence[RouteSummary]:
        return self.directory.routes()

    # ------------------------------------------------------------ intelligence

    async def relay_message(
        self, invocation: Invocation, targets: Sequence[RoomKey], message: str
    ) -> Document:
        managed = self.directory.by_key.get(invocation.room_key or "")
        if managed is None:
            raise CommandError("!relay works in the source room, where the message belongs")
        source = Source(
            managed,
            invocation.event_id,
            invocation.sender,
            invocation.sent_at or datetime.now(UTC),
            invocation.event,
        )
        reply = await self.relay.handle(source, message, only=targets)
        if reply is None:
            raise CommandError("the message must be tagged: [MARKING] [PRECEDENCE] text")
        return reply

    # ------------------------------------------------------------ release control

    def _desk(self) -> ReleaseDesk:
        if self.release is None:
            raise CommandError("release approval is not set up on this bot")
        return self.release

    async def release_approve(
        self, invocation: Invocation, request: str, targets: Sequence[RoomKey]
    ) -> Document:
        return await self._desk().approve(
            invocation.sender,
            request,
            targets,
            invocation.room_id,
            invocation.event,
            direct=invocation.is_direct,
        )

    async def release_deny(self, invocation: Invocation, request: str, reason: str) -> Document:
        return await self._desk().deny(
            invocation.sender,
            request,
            parse_reason(reason),
            invocation.room_id,
            invocation.event,
            invocation.event_id,
            direct=invocation.is_direct,
        )

    async def release_pending(self, invocation: Invocation) -> Document:
        room = None if invocation.is_direct else invocation.room_id
        return await self._desk().pending(invocation.sender, room)

    async def search(
        self,
        actor: UserId,
        room_key: RoomKey,
        words: Sequence[str],
        topic: str | None,
        since: str | None,
        exercise: bool,
    ) -> Document:
        return await self.inventory.search(actor, room_key, words, topic, since, exercise)

    async def digest_now(
        self,
        actor: UserId,
        room_key: RoomKey,
        roles: frozenset[Role],
        cause: EventId | None = None,
    ) -> str:
        managed = self.directory.managed(room_key)
        is_member = self.membership.is_member(actor, managed)
        return await self.digests.post_now_for(actor, room_key, roles, is_member, cause)

    async def digest_schedule(
        self,
        actor: UserId,
        room_key: RoomKey,
        cron: str,
        window: str | None,
        sources: Sequence[str] | None,
    ) -> str:
        return await self.digests.schedule_from_chat(actor, room_key, cron, window, sources)

    async def digest_list(self) -> list[str]:
        return await self.digests.described()

    async def digest_cancel(self, actor: UserId, key: str) -> None:
        await self.digests.cancel_from_chat(actor, key)

    # ------------------------------------------------------------ audit and status

    async def audit_recent(self, limit: int) -> Sequence[AuditEntry]:
        return await in_thread(self.store.recent_audit, limit)

    async def audit_verify(self) -> AuditVerdict:
        return await in_thread(self.store.verify_audit)

    async def status(self) -> StatusInfo:
        return StatusInfo(
            uptime_s=time.monotonic() - self.started_at,
            sync_lag_s=self.sync_age(),
            rooms=len(self.directory.by_key),
            pending_relays=await self.relay.pending_count(),
            next_digests=tuple(
                f"{key} {when:%Y-%m-%d %H:%M %Z}" for key, when in self.digests.next_runs() if when
            ),
            device_id=self.device_id(),
        )
