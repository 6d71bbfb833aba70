"""The commands each room offers its clients (MSC4332): an `org.matrix.msc4332.commands`
state event, state key the bot's user id, in every managed room and every DM.

What a room offers is what those in it may use there: a managed room's members the
commands for members, the admin room's the admins' too, a DM its partner's by their roles.
Enum arguments offer the values of the moment (room keys, task-force rooms included,
scheme codes in force, precedences), so the event is written again when they change (a
room created or closed, someone's roles), and only then: the content is compared with
what the room holds (read once per room per start, then remembered), and a state event is
sent only when it differs. A restart with nothing changed sends nothing.

Where the bot may not set state (a DM its partner created, whose power levels give the bot
none) it says so once in the log and goes on: the commands still work typed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from bot.services.ports import HomeserverError, StateEvent
from bot.services.rooms import ManagedRoom, privileged_creator
from commands.context import Role
from commands.registry import Registry
from commands.slash import COMMANDS_EVENT, Vocabulary, describe
from policy import current
from policy.ids import UserId
from policy.tagged import Precedence

log = logging.getLogger(__name__)

PUBLISHING = 8  # rooms read or written at once: the homeserver's share, bounded

# Who a managed room's commands are for: its members. The admin room's members are admins.
MEMBER_ROLES = frozenset({Role.ANYONE, Role.MEMBER})
ADMIN_ROOM_ROLES = frozenset({Role.ANYONE, Role.MEMBER, Role.ADMIN})


class RoomState(Protocol):
    """Reading a room's state and setting one event of it (the gateway)."""

    @property
    def user_id(self) -> UserId: ...

    async def state(self, room_id: str) -> dict[tuple[str, str], StateEvent]: ...

    async def put_state(
        self, room_id: str, event_type: str, content: Mapping[str, Any], state_key: str = ""
    ) -> None: ...


class ManagedRooms(Protocol):
    """The managed rooms by key and by room id (the room directory)."""

    @property
    def by_key(self) -> Mapping[str, ManagedRoom]: ...

    @property
    def by_id(self) -> Mapping[str, ManagedRoom]: ...


class DirectChats(Protocol):
    """The bot's DMs and their partners."""

    def partner_of(self, room_id: str) -> UserId | None: ...

    def items(self) -> list[tuple[str, UserId]]: ...


def vocabulary_of(room_keys: Iterable[str]) -> Vocabulary:
    """The enum values of the moment: these room keys, the schemes in force, precedences."""
    return Vocabulary(
        room_keys=tuple(sorted(room_keys)),
        schemes=tuple(sorted(current().schemes)),
        precedences=tuple(sorted(p.name for p in Precedence)),
    )


def may_set(state: Mapping[tuple[str, str], StateEvent], user_id: str) -> bool:
    """Whether the room's power levels let `user_id` set the commands event (a creator of a
    room version 12 room may set anything). Power levels that do not read as numbers are
    left for the homeserver to judge."""
    if privileged_creator(state, user_id):
        return True
    levels = state.get(("m.room.power_levels", ""))
    if levels is None:
        return True
    content = levels.content
    try:
        users = content.get("users", {})
        held = int(users.get(user_id, content.get("users_default", 0)))
        events = content.get("events", {})
        needed = int(events.get(COMMANDS_EVENT, content.get("state_default", 50)))
    except (AttributeError, TypeError, ValueError):
        return True
    return held >= needed


def _as_json(content: Mapping[str, Any]) -> dict[str, Any]:
    """The content as the homeserver will give it back (tuples are lists), for comparing."""
    loaded: dict[str, Any] = json.loads(json.dumps(content))
    return loaded


class CommandsPublisher:
    """Keeps the commands state event of each managed room and DM as it should be."""

    def __init__(
        self,
        registry: Registry,
        state: RoomState,
        rooms: ManagedRooms,
        direct: DirectChats,
        roles_of: Callable[[UserId], frozenset[Role]],
        admin_room: Callable[[], str | None],
        spawn: Callable[[Awaitable[Any], str], None],
        sigil: str = "!",
    ) -> None:
        self.registry = registry
        self.state = state
        self.rooms = rooms
        self.direct = direct
        self.roles_of = roles_of
        self.admin_room = admin_room  # the admin room's id, if there is one
        self.spawn = spawn
        self.sigil = sigil
        self._held: dict[str, dict[str, Any]] = {}  # room id -> the content it holds
        self._refused: set[str] = set()  # rooms that refused the event (logged once)
        self._locks: dict[str, asyncio.Lock] = {}
        # (roles, vocabulary) -> content: a thousand rooms offer a handful of contents
        self._described: dict[tuple[frozenset[Role], Vocabulary], dict[str, Any]] = {}

    # ------------------------------------------------------------ what each room offers

    def vocabulary(self) -> Vocabulary:
        return vocabulary_of(self.rooms.by_key)

    def roles_in(self, room_id: str) -> frozenset[Role] | None:
        """Whose commands a room offers, or None for a room the bot offers none in."""
        if room_id == self.admin_room():
            return ADMIN_ROOM_ROLES
        if room_id in self.rooms.by_id:
            return MEMBER_ROLES
        partner = self.direct.partner_of(room_id)
        return None if partner is None else self.roles_of(partner)

    def keys_offered(self, room_id: str) -> tuple[str, ...]:
        """The room keys a room's event offers as enum values. State is never encrypted:
        the homeserver and every server with a member in the room read it, so a room names
        no other room's key (a task-force room's key can say what it is for). A managed room
        offers its own key; the admin room and an admin's or an officer's DM every key (the
        people there may act on any room); anyone else's DM none (typed, as a string)."""
        managed = self.rooms.by_id.get(room_id)
        if room_id != self.admin_room() and managed is not None:
            return (managed.key,)
        partner = self.direct.partner_of(room_id)
        if room_id == self.admin_room() or (
            partner is not None and {Role.ADMIN, Role.OFFICER} & self.roles_of(partner)
        ):
            return tuple(self.rooms.by_key)
        return ()

    def content_for(self, room_id: str) -> dict[str, Any] | None:
        roles = self.roles_in(room_id)
        if roles is None:
            return None
        key = (roles, vocabulary_of(self.keys_offered(room_id)))
        content = self._described.get(key)
        if content is None:
            if len(self._described) > 64:
                self._described.clear()
            content = _as_json(describe(self.registry, roles, key[1], self.sigil))
            self._described[key] = content
        return content

    def rooms_offered(self) -> list[str]:
        """Every room that holds the event: the managed rooms, then the DMs."""
        rooms = [m.room_id for m in self.rooms.by_key.values()]
        managed = set(rooms)
        return rooms + [r for r, _ in self.direct.items() if r not in managed]

    # ------------------------------------------------------------ publishing

    async def publish(self, room_id: str) -> bool:
        """Bring one room's event to what it should be; True if a state event was sent. A
        room the bot no longer offers commands in (a closed task-force room) that holds the
        bot's event gets it emptied: its clients stop offering commands there."""
        lock = self._locks.setdefault(room_id, asyncio.Lock())
        async with lock:
            want = self.content_for(room_id)
            if want is None and room_id not in self._held:
                return False
            want = want if want is not None else {}
            if self._held.get(room_id) == want:
                return False
            bot = self.state.user_id
            try:
                if room_id not in self._held:
                    state = await self.state.state(room_id)
                    have = state.get((COMMANDS_EVENT, bot))
                    if have is not None and _as_json(have.content) == want:
                        self._held[room_id] = want
                        return False
                    if not may_set(state, bot):
                        self._cannot(room_id, "the room's power levels do not let the bot")
                        return False
                await self.state.put_state(room_id, COMMANDS_EVENT, want, bot)
            except HomeserverError as exc:
                self._cannot(room_id, str(exc))
                return False
            self._refused.discard(room_id)
            if want:
                self._held[room_id] = want
            else:
                self._held.pop(room_id, None)
            log.info("published the commands of %s", room_id)
            return True

    def _cannot(self, room_id: str, why: str) -> None:
        """Said once per room (each trigger tries again: the power may have been given)."""
        if room_id not in self._refused:
            self._refused.add(room_id)
            log.warning(
                "the commands of %s are not published there (typed commands still work): %s",
                room_id,
                why,
            )

    async def publish_all(self) -> int:
        """Every managed room and DM (and rooms no longer offered that hold the event),
        PUBLISHING at a time; how many state events were sent."""
        rooms = self.rooms_offered()
        rooms += [r for r in self._held if r not in rooms]
        limit = asyncio.Semaphore(PUBLISHING)

        async def one(room_id: str) -> bool:
            async with limit:
                return await self.publish(room_id)

        return sum(await asyncio.gather(*(one(r) for r in rooms)))

    async def publish_for(self, user_id: UserId) -> int:
        """This person's DMs, after their roles may have changed; sent only where the
        content changes."""
        sent = 0
        for room_id, partner in self.direct.items():
            if partner == user_id:
                sent += await self.publish(room_id)
        return sent

    # ------------------------------------------------------------ hooks (in the background)

    def listen(
        self,
        rooms: list[Callable[[], None]],
        direct: list[Callable[[str, UserId], None]],
        members: list[Callable[[UserId], None]],
    ) -> None:
        """Be told of what changes a room's commands: task-force rooms created or closed
        (the room directory's listeners), DMs added (the direct rooms'), member changes in
        managed rooms (membership's: someone's roles)."""
        rooms.append(self.rooms_changed)
        direct.append(self.direct_room_added)
        members.append(self.roles_may_have_changed)

    def rooms_changed(self) -> None:
        """A task-force room was created or closed: every room's room keys change."""
        self.spawn(self.publish_all(), "commands-publish-all")

    def direct_room_added(self, room_id: str, partner: UserId) -> None:
        self.spawn(self.publish(room_id), f"commands-publish-{room_id}")

    def roles_may_have_changed(self, user_id: UserId) -> None:
        self.spawn(self.publish_for(user_id), f"commands-publish-{user_id}")


__all__ = [
    "ADMIN_ROOM_ROLES",
    "MEMBER_ROLES",
    "CommandsPublisher",
    "DirectChats",
    "ManagedRooms",
    "RoomState",
    "may_set",
    "vocabulary_of",
]
