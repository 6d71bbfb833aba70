"""Task-force rooms and routes from chat (admins): kept in the database, managed like
configured ones, surviving restarts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from commands.context import Reply, Role
from commands.document import Banner, Strong, doc, para
from commands.registry import Arg, Context, Option, Registry


def register(registry: Registry) -> None:
    @registry.command(
        "room create",
        "Create a task-force room, managed like a configured one.",
        roles=(Role.ADMIN,),
        args=(
            Arg("key", "room_key", "its short name", metavar="KEY", fresh=True),
            Arg("name", "text", "its name (typed: in quotes)", metavar='"NAME"'),
            Arg("label", "text", "its marking (typed: in quotes)", metavar='"LABEL"'),
        ),
        options=(
            Option("audience", "text", "narrow the audience: trigraphs, NATO, EU", metavar="A,B"),
        ),
        example='room create tf-baltic "Task force Baltic" "NATO SECRET" --audience DEU,POL,LTU',
    )
    async def create(ctx: Context, values: Mapping[str, Any]) -> Reply:
        audience = values["audience"].split(",") if values["audience"] else None
        room = await ctx.services.room_create(
            ctx.sender, values["key"], values["name"], values["label"], audience
        )
        return Reply(
            doc(
                para(
                    "Created ",
                    Strong(room.key),
                    " — ",
                    Banner(room.banner, room.policy.rank),
                    f" — {room.name}. Invite people with !invite.",
                )
            )
        )

    @registry.command(
        "room close",
        "Close a task-force room: every member is removed.",
        roles=(Role.ADMIN,),
        args=(Arg("key", "room_key", "the room", metavar="KEY"),),
        example="room close tf-baltic",
    )
    async def close(ctx: Context, values: Mapping[str, Any]) -> Reply:
        removed = await ctx.services.room_close(ctx.sender, values["key"])
        return Reply(doc(para(f"Closed {values['key']}; removed {len(removed)} member(s).")))

    for verb, add in (("add", True), ("remove", False)):

        @registry.command(
            f"route {verb}",
            f"{verb.capitalize()} a relay route (kept in the database).",
            roles=(Role.ADMIN,),
            args=(
                Arg("source", "room_key", "from room", metavar="FROM"),
                Arg("target", "room_key", "to room", metavar="TO"),
            ),
            example=f"route {verb} deu tf-baltic",
        )
        async def route(ctx: Context, values: Mapping[str, Any], add: bool = add) -> Reply:
            await ctx.services.route_change(ctx.sender, values["source"], values["target"], add)
            word = "added" if add else "removed"
            return Reply(doc(para(f"Route {values['source']} → {values['target']} {word}.")))
