"""Access decisions: who may join a room, which label may go where.

Deny by default, and every answer carries its reasons: a refusal names each failed
condition, an allow says why it was allowed, so the audit log and the user see the same why.
Rules take everything they need as arguments (including today's date): no clock, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

from policy.catalogue import Level, current
from policy.labels import Label, MarkingError, convert, releasable_set, why_no_equivalent

# A reason code: dotted lower-case words (`clearance.level_too_low`). Codes are stable: a SOC
# filters on them, so one is never renamed or reused for another condition.
CODE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")


@dataclass(frozen=True, slots=True)
class Decision:
    """An answer with its reasons; `spillage` marks a label that does not fit its own room.

    `codes` holds one short machine code per reason, in the same order: the reasons are
    for people and name levels, caveats and audiences, which must not leave the bot in
    clear (the SIEM export carries the code, never the text)."""

    allowed: bool
    reasons: tuple[str, ...]
    spillage: bool = False
    codes: tuple[str, ...] = field(kw_only=True)

    def __post_init__(self) -> None:
        # Only the count is checked here (a decision is made per relay target and must stay
        # cheap); the codes' form is a property the tests check over every rule.
        if len(self.codes) != len(self.reasons):
            raise ValueError(
                f"a decision needs one code per reason: {len(self.reasons)} reasons, "
                f"codes {self.codes!r}"
            )

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    @property
    def code(self) -> str:
        """The first reason's code: for a refusal, the first condition that failed
        (`spillage` for a release whose label does not fit its own room); "" for a decision
        without reasons."""
        return self.codes[0] if self.codes else ""

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True, slots=True)
class Room:
    """What the rules need of a managed room: its label, its (possibly narrowed) audience,
    and the homeservers its members may come from (None: any)."""

    label: Label
    audience: frozenset[str]
    servers: frozenset[str] | None = None

    @property
    def scheme(self) -> str:
        return self.label.scheme

    @property
    def rank(self) -> int:
        return self.label.rank

    @property
    def caveats(self) -> frozenset[str]:
        return self.label.caveats


def server_of(user_id: str) -> str:
    """The homeserver of a Matrix user id (`@lo:deu.example` -> `deu.example`)."""
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def make_room(
    label: Label, audience: Iterable[str] | None = None, servers: Iterable[str] | None = None
) -> Room:
    """A room whose audience defaults to its label's releasable set; a narrowing must be a
    non-empty subset of that set. Raises MarkingError naming what is outside.
    `servers`: the homeservers members may come from (None: any)."""
    hosts = frozenset(servers) if servers is not None else None
    if hosts is not None and not hosts:
        raise MarkingError("a room's servers must name at least one homeserver")
    full = releasable_set(label)
    if audience is None:
        return Room(label, full, hosts)
    tokens = tuple(audience)
    nations = current().expand(tokens)
    if not nations:
        raise MarkingError("a room audience must name at least one nation")
    outside = sorted(nations - full)
    if outside:
        raise MarkingError(
            f"audience {', '.join(outside)} is outside the releasable set of "
            f"{label.banner!r}: a room audience may only narrow it"
        )
    return Room(label, nations, hosts)


@dataclass(frozen=True, slots=True)
class Clearance:
    """A person's clearance as the register holds it; grants are per scheme."""

    user_id: str
    nationality: str
    grants: Mapping[str, Level]  # scheme -> granted level
    caveats: frozenset[str] = frozenset()
    expires: date | None = None  # valid through that day (UTC)
    revoked: bool = False
    # Why the record may not be used at all (a grant on record that the schemes in force
    # read at another rank, or not at all): each denies every decision, with the reason.
    unusable: tuple[str, ...] = ()

    def __hash__(self) -> int:
        return hash((self.user_id, self.nationality, tuple(sorted(self.grants.items()))))


def may_join(clearance: Clearance, room: Room, today: date) -> Decision:
    """Allowed iff valid (not expired, not revoked, no grant the schemes in force read
    otherwise), nationality in the room's audience, a grant in the room's own scheme at or
    above its rank, a homeserver the room allows, and every caveat of the room."""
    denied = _Reasons()
    allowed = _Reasons()
    if clearance.revoked:
        denied.add("clearance.revoked", f"clearance of {clearance.user_id} is revoked")
    for why in clearance.unusable:
        denied.add("clearance.unusable", why)
    if clearance.expires is not None and today > clearance.expires:
        denied.add(
            "clearance.expired",
            f"clearance of {clearance.user_id} expired on {clearance.expires.isoformat()}",
        )
    elif clearance.expires is not None:
        allowed.add("clearance.valid", f"valid through {clearance.expires.isoformat()}")
    if clearance.nationality in room.audience:
        allowed.add(
            "audience.nationality_in",
            f"nationality {clearance.nationality} is in the room's audience",
        )
    else:
        denied.add(
            "audience.nationality_outside",
            f"nationality {clearance.nationality} is not in the room's audience "
            f"({_audience_text(room.audience)})",
        )
    grant = clearance.grants.get(room.scheme)
    room_level = room.label.level
    if grant is None:
        held = ", ".join(sorted(lv.banner for lv in clearance.grants.values())) or "none"
        denied.add(
            "clearance.no_grant_in_scheme",
            f"no {room.scheme} grant for a {room_level.banner} room (holds: {held})",
        )
    elif grant.rank < room.rank:
        denied.add(
            "clearance.level_too_low",
            f"grant {grant.banner} is below the room's {room_level.banner}",
        )
    else:
        allowed.add("clearance.level_covers", f"grant {grant.banner} covers {room_level.banner}")
    if room.servers is not None:
        server = server_of(clearance.user_id)
        if server in room.servers:
            allowed.add("server.allowed", f"homeserver {server} is allowed in the room")
        else:
            denied.add(
                "server.not_allowed",
                f"homeserver {server or '(none)'} is not allowed in the room "
                f"(allowed: {', '.join(sorted(room.servers))})",
            )
    missing = sorted(room.caveats - clearance.caveats)
    if missing:
        denied.add("caveat.missing", f"not briefed for caveat {', '.join(missing)}")
    elif room.caveats:
        allowed.add("caveat.briefed", f"briefed for {', '.join(sorted(room.caveats))}")
    if denied:
        return denied.decision(False)
    return allowed.decision(True)


def may_enter(
    user_id: str,
    clearance: Clearance | None,
    room: Room,
    today: date,
    *,
    admins: frozenset[str] | None = None,
) -> Decision:
    """`may_join` for anyone, record or not: the one rule both the bot (before it invites)
    and the homeserver gate (before it lets an invite or join through) apply. `admins` is
    given for the admin room, which only those people may enter on top of the clearance."""
    if admins is not None and user_id not in admins:
        return Decision(
            False,
            (f"{user_id} is not an admin: this is the admin room",),
            codes=("admin_room.not_admin",),
        )
    if clearance is None:
        return Decision(
            False, (f"no clearance on record for {user_id}",), codes=("clearance.none",)
        )
    if clearance.user_id != user_id:
        return Decision(
            False,
            (f"the record shown is {clearance.user_id}'s, not {user_id}'s",),
            codes=("clearance.wrong_record",),
        )
    return may_join(clearance, room, today)


def fits(label: Label, room: Room) -> Decision:
    """Whether material with `label` may live in `room`: an equivalent in the room's scheme (the
    level of the same rank: never rounded) at or below the room's rank, releasable to every
    nation of the room, caveats the room has. A level the room's scheme lacks is refused
    with the reason (`USA has no level equivalent to NATO RESTRICTED`)."""
    denied = _Reasons()
    allowed = _Reasons()
    room_level = room.label.level
    equivalent = convert(label, room.scheme)
    if equivalent is None:
        denied.add("level.no_equivalent", why_no_equivalent(label, room.scheme))
    elif equivalent.rank > room.rank:
        shown = _shown(label.level, equivalent)
        denied.add(
            "level.above_room", f"write-down: {shown} is above the room's {room_level.banner}"
        )
    else:
        allowed.add(
            "level.within_room",
            f"{_shown(label.level, equivalent)} is within {room_level.banner}",
        )
    missing = room.audience - releasable_set(label)
    if missing:
        denied.add(
            "releasability.nation_missing", f"not releasable to {', '.join(sorted(missing))}"
        )
    else:
        allowed.add(
            "releasability.audience_covered",
            f"releasable to the room's audience ({_audience_text(room.audience)})",
        )
    extra = sorted(label.caveats - room.caveats)
    if extra:
        denied.add(
            "caveat.not_held_by_room",
            f"caveat {', '.join(extra)} not held by the {room_level.banner} room",
        )
    elif label.caveats:
        allowed.add(
            "caveat.held_by_room", f"caveats {', '.join(sorted(label.caveats))} held by the room"
        )
    if denied:
        return denied.decision(False)
    return allowed.decision(True)


def level_fits(levels: Sequence[Level], room: Room) -> Decision:
    """Spillage judged on the level alone, for a marking that names its level but is
    otherwise unreadable (an unknown caveat, or a word several nations use at different
    ranks): refused as spillage when any reading of the level is above the room's (the
    writer may have meant the highest: fail closed); allowed when every reading is within
    it, or when no level can be read at all (then nothing is known to spill; the message is
    refused as malformed)."""
    if not levels:
        return Decision(
            True, ("no level can be read: not judged on it",), codes=("label.unreadable",)
        )
    above = [level.banner for level in levels if level.rank > room.rank]
    if above:
        return Decision(
            False,
            (f"write-down: {' or '.join(above)}, above the room's {room.label.level.banner}",),
            spillage=True,
            codes=("level.above_room",),
        )
    shown = " or ".join(level.banner for level in levels)
    return Decision(
        True, (f"{shown} within {room.label.level.banner}",), codes=("level.within_room",)
    )


def may_release(label: Label, source: Room, target: Room) -> Decision:
    """Release from source to target: spillage if the label does not fit its own room,
    otherwise allowed iff it fits the target."""
    own = fits(label, source)
    if not own.allowed:
        head = f"spillage: {label.banner} does not fit its own room ({source.label.banner})"
        return Decision(False, (head, *own.reasons), spillage=True, codes=("spillage", *own.codes))
    return fits(label, target)


def dominant_label(
    labels: Iterable[Label], scheme: str, audience: frozenset[str] | None = None
) -> Label | None:
    """The banner of several items shown in `scheme` (ADatP-4774.1 §4.4): highest rank, union
    of caveats, and REL TO the intersection of releasable sets when that is narrower than
    `audience` (default: the scheme's own), folded to NATO/EU where complete.

    The level is the highest item's own when it is of `scheme`, else its equivalent of the same
    rank: never rounded. None for no labels, an unknown scheme, or a rank the scheme has no
    level for (`why_no_equivalent` of the highest item says why).
    """
    items = list(labels)
    catalogue = current()
    target = catalogue.scheme(scheme)
    if not items or target is None:
        return None
    top = max(lb.rank for lb in items)
    highest = [lb for lb in items if lb.rank == top]
    own = next((lb for lb in highest if lb.scheme == target.code), highest[0])
    level = convert(own, target.code)
    if level is None:
        return None
    caveats = frozenset().union(*(lb.caveats for lb in items))
    common = frozenset.intersection(*(releasable_set(lb) for lb in items))
    reference = target.audience if audience is None else audience
    rel_to = catalogue.fold_audience(common) if not reference <= common else frozenset()
    return Label(level, caveats, rel_to)


class _Reasons:
    """Reasons collected with their codes, in the order the conditions were checked."""

    __slots__ = ("codes", "texts")

    def __init__(self) -> None:
        self.codes: list[str] = []
        self.texts: list[str] = []

    def add(self, code: str, text: str) -> None:
        self.codes.append(code)
        self.texts.append(text)

    def __bool__(self) -> bool:
        return bool(self.texts)

    def decision(self, allowed: bool) -> Decision:
        return Decision(allowed, tuple(self.texts), codes=tuple(self.codes))


def _shown(level: Level, equivalent: Level) -> str:
    """`DEU GEHEIM (NATO SECRET)` across schemes, just `NATO SECRET` within one."""
    if level == equivalent:
        return level.banner
    return f"{level.banner} ({equivalent.banner})"


def _audience_text(nations: frozenset[str]) -> str:
    return ", ".join(sorted(current().fold_audience(nations)))
