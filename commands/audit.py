"""The audit log from chat: recent entries and the hash-chain check (admins, DM only)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from commands.context import Reply, Role
from commands.document import doc, heading, items, para
from commands.registry import Arg, Context, Registry
from commands.views import audit_line


def register(registry: Registry) -> None:
    @registry.command(
        "audit",
        "The last N audit entries (default 20), answered in your DM.",
        roles=(Role.ADMIN,),
        args=(Arg("n", "int", "how many entries (1-10000)", optional=True, metavar="N"),),
        example="audit 50",
    )
    async def recent(ctx: Context, values: Mapping[str, Any]) -> Reply:
        entries = await ctx.services.audit_recent(values["n"] or 20)
        if not entries:
            return Reply(doc("The audit log is empty."), private=True)
        rows = [audit_line(e) for e in reversed(entries)]
        return Reply(doc(heading(f"Audit log: last {len(entries)}"), items(rows)), private=True)

    @registry.command(
        "audit verify",
        "Check the audit log's hash chain (modified, deleted or missing rows).",
        roles=(Role.ADMIN,),
    )
    async def verify(ctx: Context, values: Mapping[str, Any]) -> Reply:
        verdict = await ctx.services.audit_verify()
        state = "intact" if verdict.intact else "BROKEN"
        return Reply(doc(para(f"Audit chain {state}: {verdict.message}.")), private=True)
