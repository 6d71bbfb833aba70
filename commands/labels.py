"""Help with markings: `!label check "MARKING"` explains one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from commands.context import CommandError, Reply
from commands.document import (
    Banner,
    Block,
    Code,
    Document,
    Strong,
    doc,
    heading,
    items,
    para,
)
from commands.registry import Arg, Context, Registry
from policy import CATALOGUE, MarkingError, Room, convert, fits, parse_marking, releasable_set


def explain(
    text: str,
    context: str | None,
    rooms: Sequence[tuple[str, str, Room]],
    extra_caveats: Sequence[str] = (),
) -> Document:
    """Canonical banner, scheme and rank, equivalents, who may receive it, rooms it fits."""
    try:
        label = parse_marking(text, context, extra_caveats=extra_caveats)
    except MarkingError as exc:
        raise CommandError(f"{exc}") from None
    schemes = ["NATO", "EU"] + ([context] if context and context not in ("NATO", "EU") else [])
    equivalents = []
    for scheme in schemes:
        level = convert(label, scheme)
        equivalents.append((f"{scheme}: ", level.banner if level else "no equivalent"))
    nations = releasable_set(label)
    folded = ", ".join(sorted(CATALOGUE.fold_audience(nations)))
    fitting = [
        (Strong(key), f" ({name}, {room.label.banner})")
        for key, name, room in rooms
        if fits(label, room).allowed
    ]
    blocks: list[Block] = [
        para(Banner(label.banner, label.rank)),
        heading(f"{label.banner}"),
        items(
            [
                (
                    "scheme ",
                    Strong(label.scheme),
                    f", level {label.level.banner}, rank {label.rank} on the common 0–4 scale",
                ),
                ("caveats: ", ", ".join(sorted(label.caveats)) or "none"),
                ("may be received by: ", folded, f" ({len(nations)} nation(s))"),
            ]
        ),
        para("Equivalents (the level shown in another scheme; the original label still decides):"),
        items(equivalents),
    ]
    if rooms:
        blocks.append(para("Managed rooms it fits: " if fitting else "It fits no managed room."))
        if fitting:
            blocks.append(items(fitting))
    return doc(*blocks)


def register(registry: Registry) -> None:
    @registry.command(
        "label check",
        "Explain a marking: banner, rank, equivalents, who may receive it, rooms it fits.",
        args=(
            Arg("marking", "rest", "the marking, e.g. GEHEIM // REL TO NATO", metavar='"MARKING"'),
        ),
        example='label check "GEHEIM // REL TO NATO"',
        details="In a managed room, short names are read with the room's scheme.",
    )
    async def check(ctx: Context, values: Mapping[str, Any]) -> Reply:
        text = values["marking"].strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1]
        for opener, closer in (("“", "”"), ("‘", "’"), ("„", "“")):
            if text.startswith(opener) and text.endswith(closer):
                text = text[1:-1]
        rooms = await ctx.services.room_policies()
        context = next(
            (room.scheme for key, _, room in rooms if key == ctx.invocation.room_key), None
        )
        caveats = await ctx.services.known_caveats()
        document = explain(text, context, rooms, caveats)
        return Reply(document + doc(para("Checked: ", Code(text))))
