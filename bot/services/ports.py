"""The narrow ports services are built with: what each needs of the homeserver edge, the
audit log and each other, and nothing more. `bot.matrix` implements the Matrix ones; the
composition root (`bot.app`) wires them. A service never holds the bot itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from commands.document import Document
from policy.ids import EventId, UserId


class HomeserverError(Exception):
    """The homeserver said no. `errcode` is the Matrix error code (M_FORBIDDEN, …), `status`
    the HTTP status when there was an answer. The edge raises it (`bot.matrix.gateway`'s
    MatrixError is one), so services catch it without knowing the edge."""

    def __init__(self, what: str, errcode: str | None, message: str, status: int | None) -> None:
        super().__init__(f"{what}: {errcode or 'error'}: {message}")
        self.what = what
        self.errcode = errcode
        self.message = message
        self.status = status


@dataclass(frozen=True)
class StateEvent:
    """One state event of a room, as the homeserver has it."""

    type: str
    state_key: str
    content: Mapping[str, Any]
    sender: str = ""


# A device as the homeserver edge knows it (nio's OlmDevice). Services only hand it back
# (a reply the refused device can read), never look inside.
Device = Any
# An incoming event as the edge received it; services hand it to the sender gate.
EventHandle = Any


class Audit(Protocol):
    """Append one row to the hash-chained audit log."""

    async def __call__(
        self, actor: str, action: str, subject: str | None, detail: dict[str, Any]
    ) -> None: ...


class Messenger(Protocol):
    """Sending into rooms, encrypted, room keys only for those who may read.

    `tx_id`: the send's transaction id (`bot.wire.txn_id`), fixed by what caused it, so that
    the same cause handled again (a replay, a standby's takeover) yields the same event. Only
    a send no event causes leaves it out (a random one is used)."""

    @property
    def user_id(self) -> str: ...

    async def send(
        self,
        room_id: str,
        content: dict[str, Any],
        tx_id: str | None = None,
        also_to: Sequence[Device] = (),
    ) -> EventId: ...

    async def send_notice(
        self,
        room_id: str,
        document: Document,
        reply_to: str | None = None,
        also_to: Sequence[Device] = (),
        tx_id: str | None = None,
    ) -> EventId: ...

    async def redact(self, room_id: str, event_id: str, reason: str, tx_id: str) -> None:
        """Every redaction answers an event (spillage, a withdrawn copy): its id is fixed."""
        ...

    async def alert_admins(self, document: Document, tx_id: str | None = None) -> None:
        """To the admins' room or each admin's DM; `tx_id` is the alert's own, made into one
        per room the alert goes to."""
        ...

    async def sender_of(self, room_id: str, event_id: str) -> str | None:
        """Who sent an event, as the homeserver has it; None when it does not show it."""
        ...


class SenderGate(Protocol):
    """The trusted-sender gate."""

    async def untrusted_sender(
        self, room_id: str, event: EventHandle
    ) -> tuple[str, Device | None] | None: ...


class RoomControl(Protocol):
    """Membership as the homeserver sees it, and changing it."""

    def members(self, room_id: str) -> dict[UserId, bool] | None:
        """user -> joined (False: invited only), as the last sync showed; None if unknown."""
        ...

    async def invite(self, room_id: str, user_id: str) -> None: ...

    async def kick(self, room_id: str, user_id: str, reason: str) -> None: ...


class RoomAdmin(Protocol):
    """Making rooms and their state what the config says (the room directory's need)."""

    @property
    def user_id(self) -> UserId: ...

    def members(self, room_id: str) -> dict[UserId, bool] | None: ...

    async def create_room(
        self,
        *,
        name: str | None,
        topic: str | None,
        initial_state: Sequence[Mapping[str, Any]],
        power_levels: Mapping[str, Any] | None = None,
        invite: Sequence[str] = (),
        is_direct: bool = False,
    ) -> str: ...

    async def state(self, room_id: str) -> dict[tuple[str, str], StateEvent]: ...

    async def put_state(
        self, room_id: str, event_type: str, content: Mapping[str, Any], state_key: str = ""
    ) -> None: ...

    async def joined_rooms(self) -> set[str]: ...

    async def join(self, room_id: str) -> None: ...

    async def kick(self, room_id: str, user_id: str, reason: str) -> None: ...
