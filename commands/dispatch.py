"""From a chat message to a reply: prefix, pills, parse, permission, handler, errors.

Every refusal and every error is audited; nothing a handler raises other than CommandError
is echoed into the room (exception text can leak internals): the user gets a generic line and
the log gets the traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from commands.context import CommandError, Invocation, PermissionDenied, Reply, Role
from commands.document import Code, doc, para
from commands.registry import (
    Context,
    Parsed,
    Registry,
    parse_command,
    resolve_pills,
    strip_prefix,
)
from commands.services import Services
from commands.slash import Vocabulary, parse_structured

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    reply: Reply
    command: str | None  # the command's name, when one was recognised
    ok: bool


# A quoted value in an error message: Python's repr of what the person typed (every
# CommandError quotes input with !r), in either quote style, escapes included.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def elide_typed(message: str) -> str:
    """An error message as the audit log keeps it: what the person typed (quoted in the
    message) elided. The reply shows it whole; the audit log is permanent and in clear, and
    a command line may hold message text (a deny reason, a search, a marking)."""
    return _QUOTED.sub("'…'", message)


def is_command(body: str, prefixes: Sequence[str]) -> bool:
    return strip_prefix(body, prefixes) is not None


async def dispatch(
    registry: Registry,
    invocation: Invocation,
    roles: frozenset[Role],
    services: Services,
    prefixes: Sequence[str],
    *,
    vocabulary: Vocabulary | None = None,
) -> Outcome | None:
    """None when the message is not a command at all.

    A structured (MSC4332) command, `invocation.structured`, is taken from its payload alone
    (checked against `vocabulary`, the values its enums offered) and its body is not
    parsed to run it; it is refused, handled and audited like a typed one, each audit row
    marked `structured`, and its success audited as `command.structured` with whether the
    body, parsed as a typed command, says the same (a client that shows one thing and
    sends another is worth knowing about)."""
    structured = invocation.structured is not None
    # Added to every row written for a structured command.
    marked: dict[str, Any] = {"structured": True} if structured else {}
    display = "!"  # the documented prefix, in usage lines
    try:
        if invocation.structured is not None:
            parsed = parse_structured(registry, invocation.structured, vocabulary or Vocabulary())
        else:
            stripped = strip_prefix(invocation.body, prefixes)
            if stripped is None:
                return None
            line = resolve_pills(stripped[1], invocation.formatted_body)
            parsed = parse_command(registry, line, display)
    except CommandError as exc:
        await services.audit(
            invocation.sender,
            "command.error",
            None,
            {
                "room_id": invocation.room_id,
                "error": elide_typed(exc.message),
                "reason_code": "command.invalid",
                **marked,
            },
        )
        return Outcome(_error(exc), None, False)
    command = parsed.command
    ctx = Context(invocation, roles, services, display)
    try:
        if not command.allowed(roles):
            needed = " or ".join(sorted(r.value for r in command.roles))
            raise PermissionDenied(
                f"{display}{command.name} is for {needed}s only",
                f"needs {needed}",
                code="permission.role_missing",
                needs=needed,
            )
        reply = await command.handler(ctx, parsed.values)
    except PermissionDenied as exc:
        await services.audit(
            invocation.sender,
            "command.denied",
            command.name,
            {
                "room_id": invocation.room_id,
                "reason": exc.reason,
                "reason_code": exc.code,
                **exc.detail,
                **marked,
            },
        )
        return Outcome(_error(exc), command.name, False)
    except CommandError as exc:
        await services.audit(
            invocation.sender,
            "command.error",
            command.name,
            {
                "room_id": invocation.room_id,
                "error": elide_typed(exc.message),
                "reason_code": "command.failed",
                **marked,
            },
        )
        return Outcome(_error(exc), command.name, False)
    except Exception:
        log.exception("command %s failed", command.name)
        await services.audit(
            invocation.sender,
            "command.error",
            command.name,
            {
                "room_id": invocation.room_id,
                "error": "internal error",
                "reason_code": "command.internal_error",
                **marked,
            },
        )
        return Outcome(
            Reply(
                doc(
                    f"{display}{command.name} failed because of an internal error; "
                    "nothing more is known here. The administrators have the details."
                )
            ),
            command.name,
            False,
        )
    if structured:
        await services.audit(
            invocation.sender,
            "command.structured",
            command.name,
            {
                "room_id": invocation.room_id,
                "body_agrees": _body_agrees(registry, invocation, prefixes, parsed),
                "structured": True,
            },
        )
    return Outcome(reply, command.name, True)


def _body_agrees(
    registry: Registry, invocation: Invocation, prefixes: Sequence[str], parsed: Parsed
) -> bool:
    """Whether the body of a structured command, read as a typed one, is the same command
    with the same values (a body that is no command, or does not parse, disagrees)."""
    stripped = strip_prefix(invocation.body, prefixes)
    if stripped is None:
        return False
    try:
        typed = parse_command(registry, resolve_pills(stripped[1], invocation.formatted_body))
    except CommandError:
        return False
    return typed.command is parsed.command and typed.values == parsed.values


def _error(exc: CommandError) -> Reply:
    blocks = [para("⚠ ", exc.message)]
    if exc.usage:
        blocks.append(para("Usage: ", Code(exc.usage)))
    return Reply(doc(*blocks))
