"""From a sync to the services: each nio event becomes one call on the service that owns
it, so nothing past this module sees nio's event types.

Per room, in timeline order: member changes go to membership (judged on the register as
it is now), undecryptable events are held, redactions follow relayed copies, text messages
go to the inbox. Invites are accepted only from the bot's own rooms and its admins and
officers (a DM); anyone else's is declined and audited.

Each event's content is checked against its schema here (bot/matrix/schemas.py) before any
service sees it, and each event is handled on its own: one that cannot be handled is
isolated by `PoisonGuard` (logged by type and event id, audited as `event.failed`, marked
handled, the admins alerted once per sender per hour) and the sync goes on. Only an outage
(homeserver or database unreachable) makes the batch be tried again, a bounded number of
times for the same event.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
import sqlalchemy.exc
from nio import (
    BadEvent,
    InviteMemberEvent,
    MegolmEvent,
    ReactionEvent,
    RedactionEvent,
    RoomMemberEvent,
    RoomMessageEmote,
    RoomMessageNotice,
    RoomMessageText,
    SyncResponse,
)

from bot.config import BotConfig
from bot.matrix.gateway import Gateway, MatrixError
from bot.matrix.keyshare import KeyRequests
from bot.matrix.messenger import DirectRooms
from bot.matrix.schemas import (
    SchemaError,
    html_text,
    member_content,
    message_fields,
    reaction_of,
    redaction_target,
)
from bot.matrix.trust import DeviceTrust
from bot.matrix.undecryptable import Undecryptable
from bot.services.inbox import Inbox, IncomingMessage, ReceiptBatch
from bot.services.membership import Membership
from bot.services.ports import Audit
from bot.services.relay import RelayEngine, Source
from bot.services.release import Reaction, ReleaseDesk
from bot.services.rooms import RoomDirectory
from bot.storage import Store, in_thread
from bot.wire import txn_id
from commands.document import Code, Document, Mention, doc, para
from policy.ids import EventId, RoomId, UserId

log = logging.getLogger(__name__)

MAX_OUTAGE_ATTEMPTS = 8  # ~2 minutes of the sync loop's backoff; then the event is isolated
ALERT_EVERY_S = 3600.0  # admins hear of one sender's failing events at most once an hour


class AlertAdmins(Protocol):
    """The messenger's `alert_admins`: `tx_id` fixed by the event an alert is about."""

    async def __call__(self, document: Document, tx_id: str | None = None) -> None: ...


def is_outage(exc: BaseException) -> bool:
    """An outage the same event may get past when tried again: the homeserver or the
    database unreachable, overloaded or rate limiting. Anything else is the event's own
    doing (or a defect of ours): trying it again changes nothing, so it is isolated."""
    if isinstance(exc, MatrixError):
        return exc.status is not None and (exc.status >= 500 or exc.status == 429)
    return isinstance(
        exc,
        aiohttp.ClientError
        | TimeoutError
        | ConnectionError
        | sqlalchemy.exc.OperationalError
        | sqlalchemy.exc.InterfaceError,
    )


class PoisonGuard:
    """Handles each event on its own, so that one the bot cannot handle never stops the
    sync: before this, any member could send `{"io.github.liaison_bot.label": 1}` and the
    exception it raised made the sync loop retry the same batch for ever, in every room."""

    def __init__(
        self,
        store: Store,
        audit: Audit,
        alert: AlertAdmins,
        count: Callable[[], None],
    ) -> None:
        self.store = store
        self.audit = audit
        self.alert = alert
        self.count = count
        self._attempts: Counter[str] = Counter()  # event id -> outages met so far
        # The last look at an event about to be skipped: spillage in its text is removed
        # all the same (set by the event router; it must not raise past itself).
        self.judge: Callable[[str, Any], Awaitable[None]] | None = None
        self._alerted: dict[str, float] = {}  # sender -> when the admins last heard

    async def run(self, room_id: str, event: Any, work: Awaitable[None]) -> None:
        """Await `work` (the handling of `event`); an outage propagates (the batch is tried
        again, at most MAX_OUTAGE_ATTEMPTS times for this event), anything else isolates
        the event."""
        event_id = getattr(event, "event_id", None)
        key = event_id if isinstance(event_id, str) else f"{type(event).__name__}/{room_id}"
        try:
            await work
        except Exception as exc:
            if is_outage(exc):
                self._attempts[key] += 1
                if self._attempts[key] < MAX_OUTAGE_ATTEMPTS:
                    raise
            self._attempts.pop(key, None)
            await self.isolate(room_id, event, exc)
        else:
            self._attempts.pop(key, None)

    async def isolate(self, room_id: str, event: Any, exc: BaseException) -> None:
        event_id = getattr(event, "event_id", None)
        sender = getattr(event, "sender", None)
        kind = type(event).__name__
        # Type, event id and where it failed only: an exception's message may quote the
        # content, so neither it nor the chained exceptions are logged.
        log.error(
            "event %s (%s) in %s from %s could not be handled (%s); skipped. At:\n%s",
            event_id,
            kind,
            room_id,
            sender,
            type(exc).__name__,
            "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
        )
        self.count()
        if self.judge is not None:
            try:
                await self.judge(room_id, event)
            except Exception as again:
                log.error(
                    "the spillage check of %s failed too (%s)", event_id, type(again).__name__
                )
        await self.audit(
            sender if isinstance(sender, str) else "unknown",
            "event.failed",
            event_id if isinstance(event_id, str) else None,
            {"room_id": room_id, "event": kind, "error": type(exc).__name__},
        )
        if isinstance(event_id, str):
            await in_thread(self.store.mark_handled, event_id, room_id)
        if not isinstance(sender, str):
            return
        now = time.monotonic()
        if now - self._alerted.get(sender, -ALERT_EVERY_S) < ALERT_EVERY_S:
            return
        self._alerted[sender] = now
        await self.alert(
            doc(
                para(
                    "⚠ An event from ",
                    Mention(sender),
                    " could not be handled and was skipped (",
                    Code(str(event_id)),
                    f" in {room_id}, {type(exc).__name__}). The bot goes on; if more follow, "
                    "their client may be broken or probing the bot. Further events from them "
                    "that fail within the hour are only audited (event.failed).",
                )
            ),
            # fixed by the event (a standby handling it again alerts once); an event without
            # an id (an invite) has nothing to fix it by
            txn_id("alert-poison", event_id) if isinstance(event_id, str) else None,
        )


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
        guard: PoisonGuard,
        release: ReleaseDesk | None = None,
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
        self.guard = guard
        self.release = release
        guard.judge = self._last_look

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
            invite = self._on_invite(room_id, invited.invite_state)
            await self.guard.run(room_id, _Invite(room_id, invited.invite_state), invite)
        batch = ReceiptBatch()
        for room_id, info in response.rooms.join.items():
            events = list(info.timeline.events)
            if info.timeline.limited and since and info.timeline.prev_batch:
                gap = await self.gateway.messages_between(room_id, info.timeline.prev_batch, since)
                seen = {getattr(e, "event_id", None) for e in events}
                events = [e for e in gap if getattr(e, "event_id", None) not in seen] + events
                log.info("back-filled %d event(s) of a gap in %s", len(gap), room_id)
            for event in events:
                await self.guard.run(room_id, event, self.on_event(room_id, event, initial, batch))
        await self._end_batch(batch)
        for room_id in response.rooms.leave:
            managed = self.rooms.by_id.get(room_id)
            if managed is not None:
                log.error("the bot is no longer in managed room %s (%s)", managed.key, room_id)
            partner = await self.direct.forget(room_id)
            if partner is not None:
                log.info("direct room with %s closed", partner)

    async def _end_batch(self, batch: ReceiptBatch) -> None:
        """The batch's receipts; a failure that is not an outage isolates the messages
        still waiting for one (each of them, so each is audited and marked handled)."""
        waiting = [(key[0], t.handle) for key, ts in batch.pending.items() for t in ts]
        try:
            await self.inbox.end_batch(batch)
        except Exception as exc:
            if is_outage(exc):
                raise
            batch.pending.clear()
            for room_id, event in waiting:
                await self.guard.isolate(room_id, event, exc)

    async def _on_invite(self, room_id: str, invite_state: Sequence[Any]) -> None:
        inviter, is_direct = None, False
        for event in invite_state:
            if isinstance(event, InviteMemberEvent) and event.state_key == self.user_id:
                try:
                    is_direct = bool(member_content(event.content).is_direct)
                except SchemaError as exc:
                    log.warning("invite to %s with malformed content: %s", room_id, exc)
                    is_direct = False
                inviter = event.sender
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
                try:
                    membership = member_content(event.source.get("content")).membership
                except SchemaError as exc:
                    # The server accepted it, so someone's membership changed: whoever
                    # it is is judged on the register as a member would be.
                    log.warning("member event %s dropped: %s", event.event_id, exc)
                    membership = "join"  # judged as if joined: the safe direction
                await self.membership.on_member_event(room_id, event.state_key, membership)
            return
        if isinstance(event, MegolmEvent):
            if event.sender != self.user_id and ours:
                await self.undecryptable.hold(room_id, event)
            return
        if isinstance(event, RedactionEvent):
            if managed is not None and not initial and event.sender != self.user_id:
                try:
                    target = redaction_target(event.source.get("content"), event.redacts)
                except SchemaError as exc:
                    log.warning("redaction %s dropped: %s", event.event_id, exc)
                    return
                await self.relay.handle_redaction(managed, target, event.sender)
            return
        if isinstance(event, ReactionEvent) or (
            isinstance(event, BadEvent) and event.type == "m.reaction"
        ):
            if managed is not None and not initial and event.sender != self.user_id:
                await self._on_reaction(room_id, event)
            return
        if isinstance(event, RoomMessageNotice | RoomMessageEmote) and not initial:
            await self._last_look(room_id, event)  # never acted on, but read by people
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
                fields=message_fields(event.source.get("content")),
                sent_at=sent_at(event),
                handle=event,
                ciphertext=self.gateway.ciphertext_of(event.event_id),
            ),
            batch,
        )

    async def _on_reaction(self, room_id: str, event: Any) -> None:
        """A reaction in a managed room: to a release notice, ✅ / ❌ decide (the desk
        judges who may). Malformed content is audited and skipped."""
        if self.release is None:
            return
        try:
            relates_to, key = reaction_of(event.source.get("content"))
        except SchemaError as exc:
            log.warning("reaction %s dropped: %s", event.event_id, exc)
            await self.release.malformed(room_id, event.event_id, event.sender, str(exc))
            return
        await self.release.on_reaction(
            Reaction(
                room_id=room_id,
                event_id=event.event_id,
                sender=UserId(event.sender),
                relates_to=relates_to,
                key=key,
                handle=event,
                ciphertext=self.gateway.ciphertext_of(event.event_id),
            )
        )

    async def _last_look(self, room_id: str, event: Any) -> None:
        """An event that is not acted on (its handling failed, or it is not a text message
        the bot acts on): any text of it that names a level above the room is spillage all
        the same, and the event (only it) is redacted."""
        managed = self.rooms.by_id.get(room_id)
        source = getattr(event, "source", None)
        if managed is None or not isinstance(source, dict) or event.sender == self.user_id:
            return
        content = source.get("content")
        if not isinstance(content, dict):
            return
        new = content.get("m.new_content")
        formatted = content.get("formatted_body")
        bodies = [
            content.get("body"),
            new.get("body") if isinstance(new, dict) else None,
            html_text(formatted) if isinstance(formatted, str) else None,
        ]
        texts = [b for b in bodies if isinstance(b, str)]
        if texts:
            spill = Source(managed, EventId(event.event_id), event.sender, sent_at(event), event)
            await self.relay.remove_if_spilled(spill, texts)

    async def on_decrypted(self, room_id: str, event: Any) -> None:
        await self.guard.run(room_id, event, self.on_event(room_id, event, False))


class _Invite:
    """An invite as the guard names it (an invite has no timeline event id)."""

    def __init__(self, room_id: str, invite_state: Sequence[Any]) -> None:
        self.event_id = None
        self.sender = next(
            (e.sender for e in invite_state if isinstance(e, InviteMemberEvent)), None
        )


def sent_at(event: Any) -> datetime:
    """When the sender's server received it; now, when the event carries no usable stamp."""
    stamp = getattr(event, "server_timestamp", None)
    if isinstance(stamp, int) and stamp > 0:
        return datetime.fromtimestamp(stamp / 1000, UTC)
    return datetime.now(UTC)
