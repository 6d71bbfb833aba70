"""Inviting people into managed rooms, only after `may_join`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from commands.context import CommandError, Reply, Role
from commands.document import Strong, doc, para
from commands.registry import Arg, Context, Registry


def register(registry: Registry) -> None:
    @registry.command(
        "invite",
        "Invite a user to a managed room if their clearance allows it, else say why not.",
        roles=(Role.ADMIN, Role.OFFICER),
        args=(Arg("user", "user", "the person"), Arg("room", "room_key", "the room's key")),
        example="invite @analyst:example.org nato-s",
    )
    async def invite(ctx: Context, values: Mapping[str, Any]) -> Reply:
        outcome = await ctx.services.invite(ctx.sender, values["user"], values["room"])
        if not outcome.decision.allowed:
            raise CommandError(
                f"{values['user']} may not join {values['room']}: {outcome.decision.reason}"
            )
        return Reply(
            doc(
                para(
                    "Invited ",
                    Strong(values["user"]),
                    " to ",
                    Strong(values["room"]),
                    ": ",
                    outcome.decision.reason,
                    ".",
                )
            )
        )
