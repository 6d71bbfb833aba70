"""From a sync to the services: each nio event becomes one call on the service that owns
it, so nothing past this module sees nio's event types.

Per room, in timeline order: member changes go to membership (judged on the register as
it is now), undecryptable events are held, redactions follow relayed copies, text messages
go to the inbox. Invites are accepted only from the bot's own rooms and its admins and
officers (a DM); anyone else's is declined and audited.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from nio import (
    InviteMemberEvent,
    MegolmEvent,
    RedactionEvent,
    RoomMemberEvent,
    RoomMessageText,
    SyncResponse,
)

from bot.config import BotConfig
from bot.matrix.gateway import Gateway, MatrixError
from bot.matrix.keyshare import KeyRequests
from bot.matrix.messenger import DirectRooms
from bot.matrix.trust import DeviceTrust
from bot.matrix.undecryptable import Undecryptable
from bot.services.inbox import Inbox, IncomingMessage, ReceiptBatch
from bot.services.membership import Membership
from bot.services.ports import Audit
from bot.services.relay import RelayEngine
from bot.services.rooms import RoomDirectory
from policy.ids import EventId, RoomId, UserId

log = logging.getLogger(__name__)


class EventRouter:
    def __init__(
        self,
        gateway: Gateway,
        settings: BotConfig,
        rooms: RoomDirectory,
        direct: DirectRooms,
        membership: Membership,
        trust: DeviceTrust,
        key_requests: KeyRequests,
        undecryptable: Undecryptable,
        relay: RelayEngine,
        inbox: Inbox,
        audit: Audit,
    ) -> None:
        self.gateway = gateway
        self.settings = settings
        self.rooms = rooms
        self.direct = direct
        self.membership = membership
        self.trust = trust
        self.key_requests = key_requests
        self.undecryptable = undecryptable
        self.relay = relay
        self.inbox = inbox
        self.audit = audit

    @property
    def user_id(self) -> str:
        return self.gateway.user_id

    async def handle_sync(self, response: SyncResponse, since: str | None, initial: bool) -> None:
        changed = [*response.device_list.changed, *response.device_list.left]
        self.trust.invalidate(changed)
        # A cleared user's identity may have changed: check now, so admins hear of it at
        # once and not at the next message.
        await self.trust.refresh(u for u in changed if self.membership.is_cleared(u))
        self.key_requests.offer(response.to_device_events)
        for room_id, invited in response.rooms.invite.items():
            await self._on_invite(room_id, invited.invite_state)
        batch = ReceiptBatch()
        for room_id, info in response.rooms.join.items():
            events = list(info.timeline.events)
            if info.timeline.limited and since and info.timeline.prev_batch:
                gap = await self.gateway.messages_between(room_id, info.timeline.prev_batch, since)
                seen = {getattr(e, "event_id", None) for e in events}
                events = [e for e in gap if getattr(e, "event_id", None) not in seen] + events
                log.info("back-filled %d event(s) of a gap in %s", len(gap), room_id)
            for event in events:
                await self.on_event(room_id, event, initial, batch)
        await self.inbox.end_batch(batch)
        for room_id in response.rooms.leave:
            managed = self.rooms.by_id.get(room_id)
            if managed is not None:
                log.error("the bot is no longer in managed room %s (%s)", managed.key, room_id)
            partner = await self.direct.forget(room_id)
            if partner is not None:
                log.info("direct room with %s closed", partner)

    async def _on_invite(self, room_id: str, invite_state: Sequence[Any]) -> None:
        inviter, is_direct = None, False
        for event in invite_state:
            if isinstance(event, InviteMemberEvent) and event.state_key == self.user_id:
                inviter = event.sender
                is_direct = bool(event.content.get("is_direct"))
        if room_id in self.rooms.by_id:
            await self.gateway.join(room_id)
            return
        staff = inviter is not None and (
            inviter in self.settings.admins or inviter in self.settings.officers
        )
        why = (
            "not an admin or officer"
            if not staff
            else "not marked as a direct chat"
            if not is_direct
            else None
        )
        if inviter is not None and why is None:
            try:
                await self.gateway.join(room_id)
                why = await self._not_a_dm(room_id, inviter)
            except MatrixError as exc:
                log.warning("could not join the DM from %s: %s", inviter, exc)
                return
            if why is None:
                await self.direct.add(room_id, UserId(inviter))
                await self.audit(
                    self.user_id,
                    "dm.accepted",
                    inviter,
                    {"room_id": room_id, "is_direct": is_direct},
                )
                return
        try:
            await self.gateway.leave(room_id)
        except MatrixError as exc:
            log.warning("could not decline the invite to %s: %s", room_id, exc)
        await self.audit(
            self.user_id, "invite.declined", inviter, {"room_id": room_id, "reason": why}
        )

    async def _not_a_dm(self, room_id: str, partner: str) -> str | None:
        """Why a joined room is not a direct chat with `partner`, or None. A DM is encrypted
        and holds the two of them only: private replies and admin alerts go there."""
        state = await self.gateway.state(room_id)
        if ("m.room.encryption", "") not in state:
            return "not encrypted"
        members = {
            key
            for (kind, key), event in state.items()
            if kind == "m.room.member" and event.content.get("membership") in ("join", "invite")
        }
        if not members <= {partner, self.user_id}:
            return "others are in it"
        return None

    async def on_event(
        self, room_id: str, event: Any, initial: bool, batch: ReceiptBatch | None = None
    ) -> None:
        """One timeline event (also one decrypted late, with `initial` False and no batch:
        its receipt goes on its own)."""
        managed = self.rooms.by_id.get(room_id)
        ours = managed is not None or room_id in self.direct
        if isinstance(event, RoomMemberEvent):
            if managed is not None and not initial:
                await self.membership.on_member_event(room_id, event.state_key, event.membership)
            return
        if isinstance(event, MegolmEvent):
            if event.sender != self.user_id and ours:
                await self.undecryptable.hold(room_id, event)
            return
        if isinstance(event, RedactionEvent):
            if managed is not None and not initial and event.sender != self.user_id:
                await self.relay.handle_redaction(managed, event.redacts, event.sender)
            return
        if not isinstance(event, RoomMessageText) or event.sender == self.user_id or initial:
            return
        if not ours:
            return
        await self.inbox.on_message(
            IncomingMessage(
                room_id=RoomId(room_id),
                event_id=EventId(event.event_id),
                sender=UserId(event.sender),
                body=event.body,
                formatted_body=event.formatted_body,
                content=event.source.get("content", {}),
                sent_at=sent_at(event),
                handle=event,
                ciphertext=self.gateway.ciphertext_of(event.event_id),
            ),
            batch,
        )

    async def on_decrypted(self, room_id: str, event: Any) -> None:
        await self.on_event(room_id, event, False)


def sent_at(event: Any) -> datetime:
    """When the sender's server received it; now, when the event carries no usable stamp."""
    stamp = getattr(event, "server_timestamp", None)
    if isinstance(stamp, int) and stamp > 0:
        return datetime.fromtimestamp(stamp / 1000, UTC)
    return datetime.now(UTC)
