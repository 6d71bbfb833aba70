"""Commands anyone may run: help, whoami, rooms, routes; and status for admins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from commands.context import CommandError, Reply, Role
from commands.document import Code, doc, heading, items, para
from commands.registry import Arg, Context, Registry, usage_document
from commands.views import clearance_document, rooms_document, routes_document


def register(registry: Registry) -> None:
    @registry.command(
        "help",
        "List the commands you may run, or show one command's usage.",
        args=(Arg("command", "rest", "a command name, e.g. clearance grant", optional=True),),
        example="help clearance grant",
    )
    async def help_(ctx: Context, values: Mapping[str, Any]) -> Reply:
        wanted = (values["command"] or "").strip().lstrip("!/").split()
        if wanted:
            command, used = registry.resolve(wanted)
            if command is None or used != len(wanted):
                hints = registry.suggest(wanted)
                hint = f" — did you mean {', '.join(hints)}?" if hints else ""
                raise CommandError(f"no command {' '.join(wanted)!r}{hint}")
            return Reply(usage_document(command, ctx.prefix))
        rows = [
            (Code(c.usage(ctx.prefix)), " — ", c.summary) for c in registry.visible_to(ctx.roles)
        ]
        return Reply(
            doc(
                heading("liaison-bot commands you may run"),
                items(rows),
                para(f"{ctx.prefix}help COMMAND shows one command's usage."),
                para(
                    "Clients with MSC4332 support (e.g. gomuks) offer these as / commands, "
                    "with each argument to fill in."
                ),
            )
        )

    @registry.command("whoami", "Show your clearance as the bot holds it (answered in your DM).")
    async def whoami(ctx: Context, values: Mapping[str, Any]) -> Reply:
        record = await ctx.services.clearance(ctx.sender)
        roles = ", ".join(sorted(r.value for r in ctx.roles if r is not Role.ANYONE)) or "none"
        if record is None:
            return Reply(
                doc(para(f"{ctx.sender}: no clearance on record. Roles: {roles}.")), private=True
            )
        return Reply(clearance_document(record) + doc(para(f"Roles: {roles}.")), private=True)

    @registry.command("rooms", "Managed rooms with key, label banner and member count.")
    async def rooms(ctx: Context, values: Mapping[str, Any]) -> Reply:
        return Reply(rooms_document(await ctx.services.rooms()))

    @registry.command("routes", "Configured relay routes between rooms.")
    async def routes(ctx: Context, values: Mapping[str, Any]) -> Reply:
        return Reply(routes_document(await ctx.services.routes()))

    @registry.command(
        "status", "Uptime, sync lag, rooms, pending relays, next digests.", roles=(Role.ADMIN,)
    )
    async def status(ctx: Context, values: Mapping[str, Any]) -> Reply:
        info = await ctx.services.status()
        lag = "not synced yet" if info.sync_lag_s is None else f"{info.sync_lag_s:.1f} s"
        digests = ", ".join(info.next_digests) or "none scheduled"
        return Reply(
            doc(
                heading("liaison-bot status"),
                items(
                    [
                        (f"uptime: {_duration(info.uptime_s)}",),
                        (f"since last sync: {lag}",),
                        (f"managed rooms: {info.rooms}",),
                        (f"pending relays: {info.pending_relays}",),
                        (f"next digests: {digests}",),
                        ("device: ", Code(info.device_id)),
                    ]
                ),
            )
        )


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rem = divmod(whole, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"
