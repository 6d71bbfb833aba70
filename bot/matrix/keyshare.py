"""Answering other people's room key requests for the sessions the bot created.

nio answers `m.room_key_request` only from the bot's own devices. A cleared member's device
can still lack a key the bot sent: a device added after the key went out, or a member who
joined between the bot's last look at the member list and its send. Without an answer,
Element shows "Unable to decrypt" for good. The bot answers such a request when all of these
hold at the time of the request, and ignores (counts, audits) every other one:

- the session is one the bot created (its own curve25519 key, its own copy of the session),
  for a room it manages or a DM it holds, and it remembers what it sent with it;
- the requesting user passes `may_join` for that room (in a DM: is the partner);
- the requesting device is one the device policy trusts, as the owner's keys show it now
  (asked from the server: the request may come before the sync that shows a new device);
- the user is joined now, and was joined at the messages being opened and not left out of
  them on purpose (a member whose clearance had lapsed when they were sent): the session is
  forwarded only from the first message index after the last one the user could not read
  (history visibility is "joined", membership at each event as the homeserver has it).

Anyone can send the bot to-device messages, so the cheap local checks come first, a user's
requests that need the homeserver are rate-limited, and ignored requests are audited once per
(user, device, room, session) and at most AUDITS_PER_HOUR times per user.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nio import RoomKeyRequest, RoomKeyRequestCancellation

from bot.matrix.gateway import DevicePolicy, Gateway, MatrixError
from bot.wire import MEGOLM
from policy import Decision
from policy.ids import UserId

log = logging.getLogger(__name__)

# Ignored requests are audited once per (user, device, room, session): clients repeat their
# requests, and anyone on the server can send the bot to-device messages.
AUDITED_IGNORES = 10_000
AUDITS_PER_HOUR = 30  # ignored requests audited per user and hour; all are counted
CHECKS_PER_MINUTE = 10  # requests per user and minute that may ask the homeserver anything
BACKLOG = 1000  # requests waiting for the one worker; more are dropped
FIELD_LIMIT = 255  # request fields come from anyone: bounded before they reach the audit


class _PerUser:
    """At most `limit` events per user in a sliding `window` (seconds)."""

    def __init__(self, limit: int, window: float, users: int = 10_000) -> None:
        self.limit, self.window, self.users = limit, window, users
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, user_id: str) -> bool:
        now = time.monotonic()
        times = self._seen.setdefault(user_id, deque())
        self._seen.move_to_end(user_id)
        while times and now - times[0] > self.window:
            times.popleft()
        while len(self._seen) > self.users:
            self._seen.popitem(last=False)
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True


@dataclass(frozen=True)
class KeyRequestOutcome:
    """What was done with one request, and why (every allow has a reason, as every refusal);
    `code` is the reason's stable machine code, which the audit row carries beside the words
    (a refusal's words may name the room's levels or audience)."""

    answered: bool
    reason: str
    code: str
    first_index: int | None = None


Entitled = Callable[[str, UserId], Decision]  # (room id, user id) -> may this user read it
Audit = Callable[[str, str, str | None, dict[str, Any]], Awaitable[None]]


class KeyRequests:
    """Decides and answers room key requests from other users' devices."""

    def __init__(
        self,
        gateway: Gateway,
        entitled: Entitled,
        device_trusted: DevicePolicy,
        refresh_trust: Callable[[str], Awaitable[None]],
        audit: Audit,
        count: Callable[[str], None],
    ) -> None:
        self._gateway = gateway
        self._refresh_trust = refresh_trust
        self._entitled = entitled
        self._device_trusted = device_trusted
        self._audit = audit
        self._count = count
        self._audited: OrderedDict[tuple[str, str, str, str], None] = OrderedDict()
        self._audits = _PerUser(AUDITS_PER_HOUR, 3600.0)
        self._checks = _PerUser(CHECKS_PER_MINUTE, 60.0)
        self._queue: asyncio.Queue[RoomKeyRequest] = asyncio.Queue(BACKLOG)

    def offer(self, events: Sequence[Any]) -> None:
        """Queue the requests of one sync for the worker; past the backlog they are dropped
        (anyone can send them) and counted."""
        for request in self.requests_in(events):
            try:
                self._queue.put_nowait(request)
            except asyncio.QueueFull:
                self._count("dropped")

    async def run(self) -> None:
        """One worker, off the sync loop: each request may ask the homeserver several things,
        and anyone can send them (the backlog is bounded; users are rate-limited)."""
        while True:
            await self.handle(await self._queue.get())

    def requests_in(self, events: Sequence[Any]) -> list[RoomKeyRequest]:
        """The requests of one sync's to-device events this handler owns: other users'
        (the bot's own devices are nio's to answer), not cancelled in the same batch."""
        own = self._gateway.user_id
        cancelled = {
            (e.sender, e.request_id)
            for e in events
            if isinstance(e, RoomKeyRequestCancellation) and e.sender != own
        }
        return [
            e
            for e in events
            if isinstance(e, RoomKeyRequest)
            and e.sender != own
            and (e.sender, e.request_id) not in cancelled
        ]

    async def handle(self, request: RoomKeyRequest) -> KeyRequestOutcome:
        try:
            outcome = await self._decide_and_forward(request)
        except MatrixError as exc:
            outcome = KeyRequestOutcome(
                False, f"the homeserver refused: {exc.message}", "homeserver.refused"
            )
        except Exception as exc:  # a failed request must not stop the ones after it
            log.warning("a key request from %s failed: %s", request.sender, exc)
            outcome = KeyRequestOutcome(False, f"failed: {type(exc).__name__}", "internal.failed")
        if outcome.answered:
            self._count("answered")
            await self._audit(
                self._gateway.user_id,
                "key-request.answered",
                request.sender,
                {
                    "room_id": request.room_id,
                    "device_id": request.requesting_device_id,
                    "session_id": request.session_id,
                    "first_index": outcome.first_index,
                    "reason": outcome.reason,
                    "reason_code": outcome.code,
                },
            )
            log.info(
                "forwarded session %s of %s to %s %s from index %s",
                request.session_id,
                request.room_id,
                request.sender,
                request.requesting_device_id,
                outcome.first_index,
            )
            return outcome
        self._count("ignored")
        log.debug(
            "ignored a key request from %s %s: %s",
            request.sender,
            request.requesting_device_id,
            outcome.reason,
        )
        key = (
            str(request.sender)[:FIELD_LIMIT],
            str(request.requesting_device_id)[:FIELD_LIMIT],
            str(request.room_id)[:FIELD_LIMIT],
            str(request.session_id)[:FIELD_LIMIT],
        )
        if key not in self._audited and self._audits.allow(key[0]):
            self._audited[key] = None
            while len(self._audited) > AUDITED_IGNORES:
                self._audited.popitem(last=False)
            await self._audit(
                self._gateway.user_id,
                "key-request.ignored",
                key[0],
                {
                    "level": "debug",
                    "device_id": key[1],
                    "room_id": key[2],
                    "session_id": key[3],
                    "reason": outcome.reason,
                    "reason_code": outcome.code,
                },
            )
        return outcome

    async def _decide_and_forward(self, request: RoomKeyRequest) -> KeyRequestOutcome:
        gateway, user_id, room_id = self._gateway, request.sender, request.room_id
        if request.algorithm != MEGOLM:
            return KeyRequestOutcome(False, "not a megolm session", "key.not_megolm")
        if request.sender_key != gateway.own_sender_key:
            return KeyRequestOutcome(False, "not a session the bot created", "key.not_own_session")
        session = gateway.own_inbound_session(room_id, request.session_id)
        if session is None:
            return KeyRequestOutcome(
                False, "no such session of the bot's in that room", "key.no_session"
            )
        decision = self._entitled(room_id, UserId(user_id))
        if not decision.allowed:
            return KeyRequestOutcome(False, decision.reason, decision.code)
        sent = gateway.sent_with(room_id, request.session_id)
        if not sent:
            return KeyRequestOutcome(
                False, "the bot does not remember that session's messages", "key.session_forgotten"
            )
        if not self._checks.allow(user_id):
            return KeyRequestOutcome(
                False, f"more than {CHECKS_PER_MINUTE} requests a minute", "key.rate_limited"
            )
        if not await gateway.joined_now(room_id, user_id):
            return KeyRequestOutcome(False, "the user is not in the room now", "key.not_joined")
        device = await gateway.current_device(user_id, request.requesting_device_id)
        if device is None:
            return KeyRequestOutcome(
                False, "the requesting device is not among the user's", "device.unknown"
            )
        await self._refresh_trust(user_id)  # its owner's signatures as they are now
        if not self._device_trusted(user_id, device):
            return KeyRequestOutcome(
                False, "the device policy does not trust that device", "device.untrusted"
            )
        first: int | None = None
        for item in reversed(sent):
            if item.event_id is None:
                break  # whether it exists is unknown: never open it, nor what came before
            if user_id in item.excluded:
                break  # left out on purpose when it was sent (not entitled then)
            if await gateway.membership_at(room_id, item.event_id, user_id) != "join":
                break
            first = item.index
        if first is None:
            return KeyRequestOutcome(
                False,
                "the user was not joined when the session's last message was sent",
                "key.not_joined_at_send",
            )
        await gateway.forward_room_key(device, room_id, session, first)
        return KeyRequestOutcome(True, decision.reason, decision.code, first)
