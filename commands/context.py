"""The plain values a command is handled with: who asked and where (`Invocation`), with
which roles (`Role`), what comes back (`Reply`) and the error a user may see (`CommandError`).

Kept apart from the registry and the service ports so that both can use them without
importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from commands.document import Document
from policy.ids import EventId, RoomId, RoomKey, UserId


class Role(StrEnum):
    ANYONE = "anyone"
    MEMBER = "member"
    OFFICER = "officer"
    ADMIN = "admin"


class CommandError(Exception):
    """A message for the user; `usage` is appended when the input was malformed."""

    def __init__(self, message: str, usage: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


class PermissionDenied(CommandError):
    """The caller may not do this. Raised wherever the rule is known (a role, membership of
    a room, whose record it is); `commands.dispatch` audits it as `command.denied`, once.
    `code` is the rule's stable machine code, the form of the reason a SIEM export carries."""

    def __init__(self, message: str, reason: str, *, code: str, **detail: Any) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Invocation:
    """A command as it reached the bot: who, where, and the raw message."""

    sender: UserId
    room_id: RoomId
    event_id: EventId
    body: str
    formatted_body: str | None = None
    mentions: tuple[str, ...] = ()
    room_key: RoomKey | None = None  # the managed room the command was sent in
    is_direct: bool = False
    event: Any = None  # the bot's own handle on the event (opaque here)
    sent_at: datetime | None = None
    # The message's MSC4332 `org.matrix.msc4332.command` payload, when a client sent the
    # command structured: then it alone says what to run, and `body` is only shown.
    structured: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Reply:
    document: Document
    private: bool = False  # reveal the register or the log: the caller's DM only
