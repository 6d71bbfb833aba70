"""Help with markings: `!label check "MARKING"` explains one, `!label schemes [CODE]` shows a
nation's levels and their NATO and EU equivalents."""

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
from policy import (
    Level,
    MarkingError,
    Room,
    current,
    equivalent,
    fits,
    parse_marking,
    releasable_set,
)
from policy.labels import scheme_rows


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
        found = equivalent(label, scheme)
        equivalents.append((f"{scheme}: ", _shown(found)))
    nations = releasable_set(label)
    folded = ", ".join(sorted(current().fold_audience(nations)))
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
        para(
            "Equivalents (the level of the same rank in another scheme, never rounded; "
            "the original label still decides):"
        ),
        items(equivalents),
    ]
    if rooms:
        blocks.append(para("Managed rooms it fits: " if fitting else "It fits no managed room."))
        if fitting:
            blocks.append(items(fitting))
    return doc(*blocks)


def _shown(found: Level | str) -> str:
    return found.banner if isinstance(found, Level) else f"none: {found}"


def describe_scheme(code: str | None) -> Document:
    """One scheme's levels (official names, other accepted forms), their NATO and EU
    equivalents, the ranks it lacks and why, and its sources; without a code, the codes."""
    catalogue = current()
    known = ", ".join(sorted(catalogue.schemes))
    if code is None:
        return doc(
            para("Known schemes: ", known, "."),
            para("Ask for one: ", Code("!label schemes DEU")),
        )
    scheme = catalogue.scheme(code)
    if scheme is None:
        raise CommandError(f"no scheme for {code.strip().upper()!r}; known: {known}")
    rows: list[tuple[str | Strong, ...]] = []
    for row in scheme_rows(scheme.code):
        if row.level is None:
            rows.append((f"rank {row.rank}: no {scheme.code} level — ", row.missing))
            continue
        also = f" (also: {', '.join(row.aliases)})" if row.aliases else ""
        legacy = " (legacy: read, never produced)" if row.level.legacy else ""
        rows.append(
            (
                Strong(row.level.banner),
                f"{also}{legacy}, rank {row.rank} — NATO: {_shown(row.nato)}; EU: {_shown(row.eu)}",
            )
        )
    blocks: list[Block] = [
        heading(f"{scheme.code} — {scheme.name}"),
        items(rows),
        para("Sources: ", "; ".join(scheme.sources) or "none given"),
    ]
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

    @registry.command(
        "label schemes",
        "Show a nation's levels and their NATO and EU equivalents (no code: the known schemes).",
        args=(
            Arg(
                "code",
                "text",
                "a scheme: DEU, NATO, EU…",
                optional=True,
                metavar="CODE",
                choices="schemes",
            ),
        ),
        example="label schemes DEU",
        details="Equivalents are the level of the same rank; a rank a nation lacks is named.",
    )
    async def schemes(ctx: Context, values: Mapping[str, Any]) -> Reply:
        return Reply(describe_scheme(values.get("code")))
