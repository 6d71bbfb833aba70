"""Releasing one tagged message to chosen route targets: `!relay` (officers, source room)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from commands.context import Reply, Role
from commands.registry import Arg, Context, Registry


def register(registry: Registry) -> None:
    @registry.command(
        "relay",
        "Release one tagged message to some of this room's route targets.",
        roles=(Role.OFFICER,),
        args=(
            Arg(
                "targets",
                "room_keys",
                "target room keys, comma separated",
                metavar="ROOMKEY[,ROOMKEY]",
            ),
            Arg(
                "message",
                "rest",
                "the tagged message: [MARKING] [PRECEDENCE] text #topic",
                metavar="TAGGED-MESSAGE",
            ),
        ),
        example="relay nato-s [GEHEIM // REL TO NATO] [PRIORITY] convoy sighted #logistics",
    )
    async def relay(ctx: Context, values: Mapping[str, Any]) -> Reply:
        document = await ctx.services.relay_message(
            ctx.invocation, values["targets"], values["message"]
        )
        return Reply(document)
