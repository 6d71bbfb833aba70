"""What people see of a relayed copy, built once and rendered to HTML and text.

NATO SECRET — originator: DEU GEHEIM // REL TO NATO
[FLASH] <the text, escaped>
Relayed from DEU national cell (deu) · @lo-deu:example.org · 2026-11-25 14:05Z
NATO SECRET — originator: DEU GEHEIM // REL TO NATO
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from commands.document import Banner, Document, Paragraph, doc, para
from policy import Label, Precedence, convert
from policy.adatp4774 import label_metadata, to_json

RELAY_KEY = "io.github.liaison_bot.relay"
# The machine-readable label (ADatP-4774, JSON form) in every relayed copy and feed post:
# the originator's label and its equivalent in the room's scheme. Same key as the room's
# label state event, which carries the same structure.
LABEL_KEY = "io.github.liaison_bot.label"
EXERCISE_LINE = "EXERCISE EXERCISE EXERCISE"


def target_banner(label: Label, scheme: str) -> tuple[str, int]:
    """The equivalent level in the target scheme with the label's caveats, and its rank."""
    level = convert(label, scheme)
    if level is None:  # callers only render what may_release allowed, which has one
        return label.banner, label.rank
    return " // ".join([level.banner, *sorted(label.caveats)]), level.rank


def relay_copy(
    *,
    label: Label,
    precedence: Precedence,
    exercise: bool,
    text: str,
    target_scheme: str,
    source_key: str,
    source_name: str,
    sender: str,
    sent_at: datetime,
    source_event_id: str,
    provenance: str | None = None,
    originator: str | None = None,
) -> dict[str, Any]:
    """The event content of one relayed copy: `m.text`, so that it notifies. `provenance`
    replaces the "Relayed from" line (a feed's own post says where it came from);
    `originator` is the label's OriginatorID (default: the sender's Matrix URI)."""
    banner, rank = target_banner(label, target_scheme)
    banner_line = para(Banner(f"{banner} — originator: {label.banner}", rank))
    lines: list[Paragraph] = []
    if exercise:
        lines.append(para(Banner(EXERCISE_LINE, 0)))
    lines.append(banner_line)
    if precedence is Precedence.FLASH:
        lines.append(para("@room"))
    prefix = "" if precedence is Precedence.ROUTINE else f"[{precedence.name}] "
    lines.append(para(prefix, text))
    when = sent_at.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")
    lines.append(
        para(
            provenance.format(when=when)
            if provenance is not None
            else f"Relayed from {source_name} ({source_key}) · {sender} · {when}"
        )
    )
    lines.append(banner_line)
    if exercise:
        lines.append(para(Banner(EXERCISE_LINE, 0)))
    document: Document = doc(*lines)
    return {
        "msgtype": "m.text",
        "body": document.plain,
        "format": "org.matrix.custom.html",
        "formatted_body": document.html,
        "m.mentions": {"room": True} if precedence is Precedence.FLASH else {},
        RELAY_KEY: {
            "source_event": source_event_id,
            "source_room": source_key,
            "label": label.banner,
            "precedence": precedence.name,
            "exercise": exercise,
        },
        LABEL_KEY: to_json(
            label_metadata(label, [target_scheme], created=sent_at, originator=originator or sender)
        ),
    }


def edit_of(copy_event_id: str, new_content: dict[str, Any]) -> dict[str, Any]:
    """An `m.replace` edit of a relayed copy carrying the re-rendered copy."""
    return {
        "msgtype": new_content["msgtype"],
        "body": "* " + new_content["body"],
        "format": new_content["format"],
        "formatted_body": "* " + new_content["formatted_body"],
        "m.new_content": {k: v for k, v in new_content.items() if k != "m.mentions"},
        "m.mentions": {},
        "m.relates_to": {"rel_type": "m.replace", "event_id": copy_event_id},
    }
