"""Situation digests from chat: now, schedule, list, cancel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from commands.context import CommandError, Reply, Role
from commands.document import Code, doc, heading, items, para
from commands.registry import Arg, Context, Option, Registry


def register(registry: Registry) -> None:
    @registry.command(
        "digest now",
        "Post the digest of a room into that room (default: this room); never into a DM.",
        roles=(Role.ADMIN, Role.OFFICER, Role.MEMBER),
        args=(
            Arg(
                "room",
                "room_key",
                "the room (default: the room you are in)",
                optional=True,
                metavar="ROOMKEY",
            ),
        ),
        example="digest now nato-s",
        details="Members may ask only for a room they are in.",
    )
    async def now(ctx: Context, values: Mapping[str, Any]) -> Reply:
        key = values["room"] or ctx.invocation.room_key
        if key is None:
            raise CommandError("name the room here: !digest now ROOMKEY (it is posted there)")
        posted = await ctx.services.digest_now(
            ctx.sender, key, ctx.roles, cause=ctx.invocation.event_id
        )
        return Reply(doc(para("Digest posted in ", Code(posted), ".")))

    @registry.command(
        "digest schedule",
        "Schedule a digest for a room (standard cron: 0 and 7 are Sunday).",
        roles=(Role.ADMIN,),
        args=(
            Arg("room", "room_key", "the room that receives it", metavar="ROOMKEY"),
            Arg(
                "cron",
                "text",
                "five-field cron, e.g. 0 6 * * 1-5 (typed: in quotes)",
                metavar='"CRON"',
            ),
        ),
        options=(
            Option("window", "text", "how far back (default 24h)", metavar="24h"),
            Option(
                "sources",
                "room_keys",
                "rooms whose items may appear (default: the room)",
                metavar="K,K",
            ),
        ),
        example='digest schedule nato-s "0 6,18 * * *" --window 12h --sources nato-s,deu',
    )
    async def schedule(ctx: Context, values: Mapping[str, Any]) -> Reply:
        line = await ctx.services.digest_schedule(
            ctx.sender, values["room"], values["cron"], values["window"], values["sources"]
        )
        return Reply(doc(para("Scheduled: ", line)))

    @registry.command(
        "digest list", "Digest schedules (config ones are cfg-N).", roles=(Role.ADMIN,)
    )
    async def list_(ctx: Context, values: Mapping[str, Any]) -> Reply:
        lines = await ctx.services.digest_list()
        if not lines:
            return Reply(doc("No digest schedules."))
        return Reply(doc(heading("Digest schedules"), items([(line,) for line in lines])))

    @registry.command(
        "digest cancel",
        "Cancel a schedule made from chat.",
        roles=(Role.ADMIN,),
        args=(Arg("id", "text", "the schedule id from !digest list", metavar="ID"),),
        example="digest cancel db-3",
    )
    async def cancel(ctx: Context, values: Mapping[str, Any]) -> Reply:
        await ctx.services.digest_cancel(ctx.sender, values["id"])
        return Reply(doc(para("Cancelled ", Code(values["id"]), ".")))
