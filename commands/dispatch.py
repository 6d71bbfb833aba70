"""From a chat message to a reply: prefix, pills, parse, permission, handler, errors.

Every refusal and every error is audited; nothing a handler raises other than CommandError
is echoed into the room (exception text can leak internals): the user gets a generic line and
the log gets the traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from commands.context import CommandError, Invocation, PermissionDenied, Reply, Role
from commands.document import Code, doc, para
from commands.registry import Context, Registry, parse_command, resolve_pills, strip_prefix
from commands.services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    reply: Reply
    command: str | None  # the command's name, when one was recognised
    ok: bool


def is_command(body: str, prefixes: Sequence[str]) -> bool:
    return strip_prefix(body, prefixes) is not None


async def dispatch(
    registry: Registry,
    invocation: Invocation,
    roles: frozenset[Role],
    services: Services,
    prefixes: Sequence[str],
) -> Outcome | None:
    """None when the message is not a command at all."""
    stripped = strip_prefix(invocation.body, prefixes)
    if stripped is None:
        return None
    line = stripped[1]
    line = resolve_pills(line, invocation.formatted_body)
    display = "!"  # the documented prefix, in usage lines
    try:
        parsed = parse_command(registry, line, display)
    except CommandError as exc:
        await services.audit(
            invocation.sender,
            "command.error",
            None,
            {"room_id": invocation.room_id, "error": exc.message, "reason_code": "command.invalid"},
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
            },
        )
        return Outcome(_error(exc), command.name, False)
    except CommandError as exc:
        await services.audit(
            invocation.sender,
            "command.error",
            command.name,
            {"room_id": invocation.room_id, "error": exc.message, "reason_code": "command.failed"},
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
    return Outcome(reply, command.name, True)


def _error(exc: CommandError) -> Reply:
    blocks = [para("⚠ ", exc.message)]
    if exc.usage:
        blocks.append(para("Usage: ", Code(exc.usage)))
    return Reply(doc(*blocks))
