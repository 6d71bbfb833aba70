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
- the user was joined at the messages being opened: the session is forwarded only from the
  first message index after the last message the user could not see (history visibility is
  "joined"), as the homeserver computes membership at each event.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nio import RoomKeyRequest

from bot.matrix import MEGOLM, DevicePolicy, Gateway, MatrixError
from policy import Decision

log = logging.getLogger(__name__)

# Ignored requests are audited once per (user, device, room, session): clients repeat their
# requests, and anyone on the server can send the bot to-device messages.
AUDITED_IGNORES = 10_000
FIELD_LIMIT = 255  # request fields come from anyone: bounded before they reach the audit


@dataclass(frozen=True)
class KeyRequestOutcome:
    """What was done with one request, and why (every allow has a reason, as every refusal)."""

    answered: bool
    reason: str
    first_index: int | None = None


Entitled = Callable[[str, str], Decision]  # (room id, user id) -> may this user read it
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

    def wants(self, event: Any) -> bool:
        """A request this handler owns: another user's, asking for a key (not a
        cancellation). The bot's own devices are nio's to answer."""
        return isinstance(event, RoomKeyRequest) and event.sender != self._gateway.user_id

    async def handle(self, request: RoomKeyRequest) -> KeyRequestOutcome:
        try:
            outcome = await self._decide_and_forward(request)
        except MatrixError as exc:
            outcome = KeyRequestOutcome(False, f"the homeserver refused: {exc.message}")
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
        if key not in self._audited:
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
                },
            )
        return outcome

    async def _decide_and_forward(self, request: RoomKeyRequest) -> KeyRequestOutcome:
        gateway, user_id, room_id = self._gateway, request.sender, request.room_id
        if request.algorithm != MEGOLM:
            return KeyRequestOutcome(False, "not a megolm session")
        if request.sender_key != gateway.own_sender_key:
            return KeyRequestOutcome(False, "not a session the bot created")
        session = gateway.own_inbound_session(room_id, request.session_id)
        if session is None:
            return KeyRequestOutcome(False, "no such session of the bot's in that room")
        decision = self._entitled(room_id, user_id)
        if not decision.allowed:
            return KeyRequestOutcome(False, decision.reason)
        device = await gateway.current_device(user_id, request.requesting_device_id)
        if device is None:
            return KeyRequestOutcome(False, "the requesting device is not among the user's")
        await self._refresh_trust(user_id)  # its owner's signatures as they are now
        if not self._device_trusted(user_id, device):
            return KeyRequestOutcome(False, "the device policy does not trust that device")
        sent = gateway.sent_with(room_id, request.session_id)
        if not sent:
            return KeyRequestOutcome(False, "the bot does not remember that session's messages")
        first: int | None = None
        for item in reversed(sent):
            if item.event_id is None:
                break  # whether it exists is unknown: never open it, nor what came before
            if await gateway.membership_at(room_id, item.event_id, user_id) != "join":
                break
            first = item.index
        if first is None:
            return KeyRequestOutcome(
                False, "the user was not joined when the session's last message was sent"
            )
        await gateway.forward_room_key(device, room_id, session, first)
        return KeyRequestOutcome(True, decision.reason, first)
