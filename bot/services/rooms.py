"""Per-classification rooms: the state a managed room must have, and making it so.

Why compare before writing: re-running with the same config must change nothing (no
duplicate state events, no churn in clients), and an adopted room may have drifted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.matrix.gateway import MEGOLM, Gateway, StateEvent
from policy import CATALOGUE, Label, Room

log = logging.getLogger(__name__)

LABEL_EVENT = "io.github.liaison_bot.label"
BOT_POWER = 100
# Events only the bot may send: who is in the room, what it is, how it is protected.
RESTRICTED_EVENTS = (
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.power_levels",
    "m.room.history_visibility",
    "m.room.join_rules",
    "m.room.guest_access",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.server_acl",
    "m.room.tombstone",
    "m.room.pinned_events",
    LABEL_EVENT,
)


class ProvisionError(Exception):
    """A room cannot be brought to its configured state; the message names the room."""


@dataclass(frozen=True)
class ManagedRoom:
    """A room the bot manages: its key, its label and audience as the rules see them."""

    key: str
    name: str
    policy: Room
    room_id: str
    origin: str = "config"

    @property
    def label(self) -> Label:
        return self.policy.label

    @property
    def banner(self) -> str:
        return self.policy.label.banner

    @property
    def topic(self) -> str:
        return f"{self.banner} — {self.name}"


def label_content(room: Room) -> dict[str, Any]:
    """The machine-readable label of DESIGN §6, for other tools (not encrypted)."""
    label = room.label
    return {
        "scheme": label.scheme,
        "level": label.level.banner,
        "rank": label.rank,
        "caveats": sorted(label.caveats),
        "audience": sorted(room.audience),
        "banner": label.banner,
    }


def power_levels(
    bot_user: str, current: Mapping[str, Any] | None = None, *, bot_is_creator: bool = False
) -> dict[str, Any]:
    """Only the bot invites, removes, bans, redacts others' events or changes room state.

    From room version 12 on, creators hold unlimited power and must not be listed in
    `users` (Synapse refuses the event), so a creating bot leaves itself out.
    """
    content: dict[str, Any] = dict(current or {})
    users = {u: lvl for u, lvl in dict(content.get("users", {})).items() if u == bot_user}
    if bot_is_creator:
        users.pop(bot_user, None)
    else:
        users[bot_user] = BOT_POWER
    events = dict(content.get("events", {}))
    events.update({e: BOT_POWER for e in RESTRICTED_EVENTS})
    content.update(
        {
            "users": users,
            "users_default": 0,
            "events": events,
            "events_default": 0,
            "state_default": BOT_POWER,
            "invite": BOT_POWER,
            "kick": BOT_POWER,
            "ban": BOT_POWER,
            "redact": BOT_POWER,
        }
    )
    return content


@dataclass
class Desired:
    """The state events a managed room must hold, keyed by (type, state_key)."""

    events: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, room: Room) -> Desired:
        banner = room.label.banner
        return cls(
            {
                ("m.room.encryption", ""): {"algorithm": MEGOLM},
                ("m.room.join_rules", ""): {"join_rule": "invite"},
                ("m.room.history_visibility", ""): {"history_visibility": "joined"},
                ("m.room.guest_access", ""): {"guest_access": "forbidden"},
                ("m.room.name", ""): {"name": name},
                ("m.room.topic", ""): {"topic": f"{banner} — {name}"},
                (LABEL_EVENT, ""): label_content(room),
            }
        )


def _privileged_creator(state: Mapping[tuple[str, str], StateEvent], user_id: str) -> bool:
    """Whether `user_id` is a creator of a room whose version gives creators unlimited
    power (room version 12 and later)."""
    create = state.get(("m.room.create", ""))
    if create is None:
        return False
    version = str(create.content.get("room_version", "1"))
    creators = {create.sender, *create.content.get("additional_creators", ())}
    return version.isdigit() and int(version) >= 12 and user_id in creators


def _differs(want: Mapping[str, Any], have: Mapping[str, Any] | None) -> bool:
    if have is None:
        return True
    return any(have.get(k) != v for k, v in want.items())


async def provision(
    gateway: Gateway,
    *,
    key: str,
    name: str,
    room: Room,
    room_id: str | None,
    previous_rank: int | None,
    joined: set[str],
) -> tuple[str, list[str]]:
    """Create the room, or bring an existing/adopted one to its state.

    Returns (room id, list of what changed). Refuses to lower a room's label.
    """
    if previous_rank is not None and room.rank < previous_rank:
        old = CATALOGUE.schemes[room.scheme].level_at_or_above(previous_rank)
        raise ProvisionError(
            f"room {key!r}: lowering its label (from rank {previous_rank}"
            f"{f', {old.banner}' if old else ''} to {room.label.banner}) is refused: "
            "make a new room instead"
        )
    desired = Desired.of(name, room)
    if room_id is None:
        initial = [
            {"type": t, "state_key": sk, "content": c}
            for (t, sk), c in desired.events.items()
            if t not in ("m.room.name", "m.room.topic")
        ]
        new_id = await gateway.create_room(
            name=name,
            topic=desired.events[("m.room.topic", "")]["topic"],
            initial_state=initial,
            power_levels=power_levels(gateway.user_id, bot_is_creator=True),
        )
        log.info("created room %s for %s", new_id, key)
        return new_id, ["created"]
    if room_id not in joined:
        await gateway.join(room_id)
    state = await gateway.state(room_id)
    changed: list[str] = []
    for (event_type, state_key), content in desired.events.items():
        have: StateEvent | None = state.get((event_type, state_key))
        if _differs(content, have.content if have else None):
            if event_type == "m.room.encryption" and have is not None:
                continue  # encryption can only be switched on; a different algorithm stays
            await gateway.put_state(room_id, event_type, content, state_key)
            changed.append(event_type)
    levels = state.get(("m.room.power_levels", ""))
    want_levels = power_levels(
        gateway.user_id,
        levels.content if levels else None,
        bot_is_creator=_privileged_creator(state, gateway.user_id),
    )
    if _differs(want_levels, levels.content if levels else None):
        await gateway.put_state(room_id, "m.room.power_levels", want_levels)
        changed.append("m.room.power_levels")
    return room_id, changed
