"""Documents shared by several commands (a clearance record, an audit entry)."""

from __future__ import annotations

from collections.abc import Sequence

from commands.document import Banner, Code, Document, Mention, Strong, doc, heading, items, para
from commands.services import AuditInfo, ClearanceInfo, RoomSummary, RouteSummary


def clearance_document(record: ClearanceInfo) -> Document:
    grants = ", ".join(g.level for g in record.grants) or "none"
    caveats = ", ".join(sorted(record.caveats)) or "none"
    expires = record.expires.isoformat() if record.expires else "no expiry"
    state = (
        f"revoked {record.revoked_at:%Y-%m-%d %H:%MZ}"
        if record.revoked_at is not None
        else "active"
    )
    identity = (
        f"pinned {fingerprint(record.identity_key)}" if record.identity_key else "not pinned yet"
    )
    if record.identity_pending:
        identity += f"; CHANGED to {fingerprint(record.identity_pending)}, awaiting confirmation"
    return doc(
        para(Mention(record.user_id), " — nationality ", Strong(record.nationality)),
        items(
            [
                ("grants: ", grants),
                ("caveats: ", caveats),
                ("expires: ", expires),
                ("status: ", state),
                ("identity: ", identity),
            ]
        ),
    )


def audit_line(entry: AuditInfo) -> tuple[Code | str, ...]:
    detail = ", ".join(f"{k}={v}" for k, v in sorted(entry.detail.items()) if v not in (None, ""))
    subject = f" {entry.subject}" if entry.subject else ""
    tail = f" ({detail})" if detail else ""
    return (
        Code(f"#{entry.id}"),
        f" {entry.at:%Y-%m-%d %H:%M:%SZ} {entry.actor} ",
        Code(entry.action),
        f"{subject}{tail}",
    )


def fingerprint(public_key: str) -> str:
    """A master key as people compare it: groups of four characters."""
    return " ".join(public_key[i : i + 4] for i in range(0, len(public_key), 4))


def normalise_fingerprint(text: str) -> str:
    """A fingerprint as people type it back (any spacing) as the key it shows."""
    return "".join(text.split())


def rooms_document(rooms: Sequence[RoomSummary]) -> Document:
    """`rooms`, in chat and on the command line."""
    if not rooms:
        return doc("No managed rooms.")
    rows = []
    for r in rooms:
        members = "members unknown offline" if r.members < 0 else f"{r.members} member(s)"
        rows.append((Strong(r.key), " — ", Banner(r.banner, r.rank), f" — {r.name} — {members}"))
    return doc(heading("Managed rooms"), items(rows))


def routes_document(routes: Sequence[RouteSummary]) -> Document:
    """`routes`, in chat and on the command line."""
    if not routes:
        return doc("No routes.")
    rows = [
        (
            Strong(r.source),
            " → ",
            ", ".join(r.targets),
            " (from chat)" if r.origin == "chat" else "",
        )
        for r in routes
    ]
    return doc(heading("Relay routes"), items(rows))
