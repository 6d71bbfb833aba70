"""The shared inventory from chat: `!search` (members, in a managed room)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from commands.context import CommandError, Reply, Role
from commands.registry import Arg, Context, Option, Registry


def register(registry: Registry) -> None:
    @registry.command(
        "search",
        "Search stored items this room may see, newest first (exercise items only if asked).",
        roles=(Role.MEMBER, Role.OFFICER, Role.ADMIN),
        args=(
            Arg(
                "words",
                "words",
                "words that must all appear (options may stand before or after them)",
                optional=True,
                metavar="WORDS",
            ),
        ),
        options=(
            Option("topic", "text", "only items with this #topic", metavar="T"),
            Option("since", "text", "how far back (default 30d, at most 365d)", metavar="7d"),
            Option("exercise", "flag", "search exercise traffic instead of real items"),
        ),
        example="search convoy kiel --topic logistics --since 7d",
    )
    async def search(ctx: Context, values: Mapping[str, Any]) -> Reply:
        if ctx.invocation.room_key is None:
            raise CommandError(
                "search works in a managed room: it answers with what that room may see"
            )
        plain: list[str] = values["words"]
        topic, since, exercise = values["topic"], values["since"], values["exercise"]
        if not plain and not topic:
            raise CommandError("give words to search for, or --topic")
        document = await ctx.services.search(
            ctx.sender, ctx.invocation.room_key, plain, topic, since, exercise
        )
        return Reply(document)
