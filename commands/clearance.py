"""The clearance register: grant, revoke, show, list."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from commands.context import PermissionDenied, Reply, Role
from commands.document import Strong, doc, heading, items, para
from commands.registry import Arg, Context, Option, Registry
from commands.views import clearance_document


def register(registry: Registry) -> None:
    @registry.command(
        "clearance grant",
        "Set a user's grant in MARKING's scheme (raise or lower); restores a revoked record.",
        roles=(Role.ADMIN,),
        args=(
            Arg("user", "user", "the person"),
            Arg("marking", "text", "a level, e.g. NATO SECRET (typed: in quotes, it has spaces)"),
        ),
        options=(
            Option("nationality", "text", "trigraph; required on a first grant", metavar="XXX"),
            Option("expires", "date", "last valid day (UTC)", metavar="YYYY-MM-DD"),
            Option("caveat", "text", "a caveat briefing held (repeat)", repeat=True, metavar="C"),
        ),
        example='clearance grant @lo-deu:example.org "NATO SECRET" --nationality DEU',
    )
    async def grant(ctx: Context, values: Mapping[str, Any]) -> Reply:
        record = await ctx.services.grant(
            ctx.sender,
            values["user"],
            values["marking"],
            nationality=values["nationality"],
            expires=values["expires"],
            caveats=values["caveat"],
        )
        return Reply(doc(para("Clearance updated:")) + clearance_document(record))

    @registry.command(
        "clearance revoke",
        "Revoke one scheme's grant, or all (the default); members no longer cleared are "
        "removed at once.",
        roles=(Role.ADMIN,),
        args=(
            Arg("user", "user", "the person"),
            Arg(
                "scope",
                "text",
                "a level or scheme (NATO, EU, DEU…), or all",
                optional=True,
                metavar='"LEVEL"|all',
            ),
        ),
        example="clearance revoke @lo-deu:example.org all",
    )
    async def revoke(ctx: Context, values: Mapping[str, Any]) -> Reply:
        scope = values["scope"]
        outcome = await ctx.services.revoke(
            ctx.sender, values["user"], None if scope in (None, "all", "ALL") else scope
        )
        removed = ", ".join(outcome.removed_from) or "no rooms"
        return Reply(
            doc(para("Clearance revoked; removed from ", Strong(removed), "."))
            + clearance_document(outcome.clearance)
        )

    @registry.command(
        "clearance show",
        "Show one clearance record (your own, or anyone's for admins); answered in your DM.",
        args=(Arg("user", "user", "the person (default: you)", optional=True),),
        example="clearance show @lo-deu:example.org",
    )
    async def show(ctx: Context, values: Mapping[str, Any]) -> Reply:
        user = values["user"] or ctx.sender
        if user != ctx.sender and Role.ADMIN not in ctx.roles:
            raise PermissionDenied(
                "only admins may see another person's clearance",
                "not admin",
                code="permission.not_admin",
                user=user,
            )
        record = await ctx.services.clearance(user)
        if record is None:
            return Reply(doc(para(f"{user}: no clearance on record.")), private=True)
        return Reply(clearance_document(record), private=True)

    @registry.command(
        "clearance list", "All clearance records (answered in your DM).", roles=(Role.ADMIN,)
    )
    async def list_(ctx: Context, values: Mapping[str, Any]) -> Reply:
        records = await ctx.services.clearances()
        if not records:
            return Reply(doc("The clearance register is empty."), private=True)
        rows = []
        for r in records:
            grants = ", ".join(g.level for g in r.grants) or "no grants"
            state = " (revoked)" if r.revoked_at else ""
            expires = f", expires {r.expires.isoformat()}" if r.expires else ""
            rows.append((Strong(r.user_id), f" {r.nationality}: {grants}{expires}{state}"))
        return Reply(
            doc(heading(f"Clearance register ({len(records)})"), items(rows)), private=True
        )

    @registry.command(
        "clearance confirm-identity",
        "Accept a user's new cross-signing master key after checking it with them out of band.",
        roles=(Role.ADMIN,),
        args=(
            Arg("user", "user", "the person whose identity changed"),
            Arg("fingerprint", "rest", "the new master key shown in the alert (spaces allowed)"),
        ),
        example="clearance confirm-identity @lo-deu:example.org 3Lbn e1Pz …",
    )
    async def confirm_identity(ctx: Context, values: Mapping[str, Any]) -> Reply:
        record = await ctx.services.confirm_identity(
            ctx.sender, values["user"], values["fingerprint"]
        )
        return Reply(
            doc(para("New identity confirmed; key sharing resumes:")) + clearance_document(record)
        )
