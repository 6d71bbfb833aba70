"""National release control from chat: `!release approve|deny|pending` (a second officer
decides what a route holds for approval; bot/services/release.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from commands.context import Reply, Role
from commands.registry import Arg, Context, Registry

# Anyone in a managed room may ask: whether they may decide (an approver of the route, not
# the sender, cleared for the item, on a trusted device) is the desk's to judge, and each
# refusal is audited there with its reason's code.
_ROLES = (Role.MEMBER, Role.OFFICER, Role.ADMIN)


def register(registry: Registry) -> None:
    @registry.command(
        "release approve",
        "Release an item held for approval to its targets (or only those named).",
        roles=_ROLES,
        args=(
            Arg("id", "text", "the held item's id, as the bot's notice names it", metavar="ID"),
            Arg(
                "targets",
                "words",
                "target room keys to release to (default: every held one)",
                optional=True,
                metavar="TARGET",
            ),
        ),
        example="release approve R12 nato-s",
        details="Not the sender's own item; a ✅ reaction to the bot's notice does the same.",
    )
    async def approve(ctx: Context, values: Mapping[str, Any]) -> Reply:
        document = await ctx.services.release_approve(
            ctx.invocation, values["id"], values["targets"]
        )
        return Reply(document)

    @registry.command(
        "release deny",
        "Deny an item held for approval; the sender is told the reason.",
        roles=_ROLES,
        args=(
            Arg("id", "text", "the held item's id, as the bot's notice names it", metavar="ID"),
            Arg("reason", "rest", "why (the sender reads it; never audited)", metavar="REASON"),
        ),
        example='release deny R12 "source protection: wait for the morning brief"',
        details="A ❌ reaction to the bot's notice denies without a reason.",
    )
    async def deny(ctx: Context, values: Mapping[str, Any]) -> Reply:
        document = await ctx.services.release_deny(ctx.invocation, values["id"], values["reason"])
        return Reply(document)

    @registry.command(
        "release pending",
        "Items held for release approval, oldest first, with their age.",
        roles=_ROLES,
    )
    async def pending(ctx: Context, values: Mapping[str, Any]) -> Reply:
        return Reply(await ctx.services.release_pending(ctx.invocation))
