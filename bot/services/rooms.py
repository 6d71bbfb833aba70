"""Per-classification rooms: the state a managed room must have, making it so, and the
directory of the rooms the bot runs and the routes between them.

Why compare before writing: re-running with the same config must change nothing (no
duplicate state events, no churn in clients), and an adopted room may have drifted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.config import Config, RoomConfig

# The homeserver gate enforces the label and judges creator power: one spelling, one rule.
from bot.gate.rules import COMMANDS_EVENT, LABEL_EVENT, creator_power_version
from bot.services.ports import HomeserverError, RoomAdmin, StateEvent
from bot.startup import StartupError
from bot.storage import Origin, RoomRecord, Store, in_thread
from bot.wire import MEGOLM
from commands.context import CommandError
from commands.document import Document, Strong, doc, items, para
from commands.services import RoomSummary, RouteSummary
from policy import (
    Label,
    MarkingError,
    Room,
    current,
    make_room,
    parse_audience,
    parse_marking,
    record_mismatch,
)
from policy.adatp4774 import label_metadata, to_json
from policy.ids import RoomId, RoomKey

log = logging.getLogger(__name__)

PROVISIONING = 8  # rooms provisioned or checked at once: the homeserver's share, bounded

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
    COMMANDS_EVENT,
)


class ProvisionError(Exception):
    """A room cannot be brought to its configured state; the message names the room (and
    labels), `code` the condition in the stable form the audit log's SIEM export carries."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ManagedRoom:
    """A room the bot manages: its key, its label and audience as the rules see them."""

    key: RoomKey
    name: str
    policy: Room
    room_id: RoomId
    origin: Origin = Origin.CONFIG

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
    """The machine-readable label of a room, for other tools (not encrypted): the
    room's label as an ADatP-4774 `originatorConfidentialityLabel` (JSON form, as in every
    relayed copy), and the same in short for readers that want no more."""
    label = room.label
    return {
        **to_json(label_metadata(label)),
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
                **({("m.room.server_acl", ""): server_acl(room.servers)} if room.servers else {}),
            }
        )


def server_acl(servers: Iterable[str]) -> dict[str, Any]:
    """The room's m.room.server_acl: only its servers, and no IP literal unless one of them
    is an IP literal itself. Each server is listed by host (federation compares an origin's
    host, port stripped) and, when it has a port, whole as well (Synapse checks a new ACL
    against its own server name as configured, port included)."""
    names = set(servers)
    hosts = {_host(s) for s in names}
    return {
        "allow": sorted(hosts | names),
        "deny": [],
        "allow_ip_literals": any(_is_ip(h) for h in hosts),
    }


def _host(server: str) -> str:
    if server.startswith("["):
        return server[: server.index("]") + 1]
    return server.rsplit(":", 1)[0] if ":" in server else server


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _powerful_creators(state: Mapping[tuple[str, str], StateEvent]) -> tuple[str, set[str]]:
    """The room's version and, if it gives creators unlimited power (room version 12 and
    later), its creators; else no one."""
    create = state.get(("m.room.create", ""))
    if create is None:
        return "", set()
    version = str(create.content.get("room_version", "1"))
    if not creator_power_version(version):
        return version, set()
    extra = create.content.get("additional_creators", ())
    extra = extra if isinstance(extra, list | tuple) else ()
    return version, {create.sender, *(str(c) for c in extra)}


def privileged_creator(state: Mapping[tuple[str, str], StateEvent], user_id: str) -> bool:
    """Whether `user_id` is a creator of a room whose version gives creators unlimited
    power (room version 12 and later)."""
    return user_id in _powerful_creators(state)[1]


def creator_warning(state: Mapping[tuple[str, str], StateEvent], bot_user: str) -> str | None:
    """What an adopted room's creators keep, if they are not the bot: in room version 12
    and later a creator holds unlimited power that no power-levels event lists or can take
    away, so they can remove members, redact and change state whatever the bot sets (the
    homeserver gate still stops them letting anyone uncleared in, on servers that run it).
    None when nobody but the bot holds it."""
    version, creators = _powerful_creators(state)
    others = sorted(creators - {bot_user})
    if not others:
        return None
    return (
        f"{', '.join(others)} keep{'s' if len(others) == 1 else ''} a creator's unlimited "
        f"power (room version {version}): no power level can take it away; "
        "move the room's work to a room the bot creates"
    )


def _differs(want: Mapping[str, Any], have: Mapping[str, Any] | None) -> bool:
    if have is None:
        return True
    return any(have.get(k) != v for k, v in want.items())


async def provision(
    gateway: RoomAdmin,
    *,
    key: str,
    name: str,
    room: Room,
    room_id: RoomId | None,
    previous_rank: int | None,
    joined: set[str],
    warnings: list[str] | None = None,
) -> tuple[RoomId, list[str]]:
    """Create the room, or bring an existing/adopted one to its state.

    Returns (room id, list of what changed). Refuses to lower a room's label. What the bot
    cannot put right (a creator other than the bot with unlimited power) is appended to
    `warnings`, for the caller to flag.
    """
    if previous_rank is not None and room.rank < previous_rank:
        scheme = current().schemes.get(room.scheme)
        old = (
            next((lv for lv in scheme.levels if lv.rank == previous_rank), None) if scheme else None
        )
        raise ProvisionError(
            f"room {key!r}: lowering its label (from rank {previous_rank}"
            f"{f', {old.banner}' if old else ''} to {room.label.banner}) is refused: "
            "make a new room instead",
            "label.lowering_refused",
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
        return RoomId(new_id), ["created"]
    if room_id not in joined:
        await gateway.join(room_id)
    state = await gateway.state(room_id)
    warning = creator_warning(state, gateway.user_id)
    if warning is not None:
        log.warning("room %s (%s): %s", key, room_id, warning)
        if warnings is not None:
            warnings.append(warning)
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
        bot_is_creator=privileged_creator(state, gateway.user_id),
    )
    if _differs(want_levels, levels.content if levels else None):
        await gateway.put_state(room_id, "m.room.power_levels", want_levels)
        changed.append("m.room.power_levels")
    return room_id, changed


class RoomDirectory:
    """The managed rooms by key and by room id, and the routes between them: the config
    file's, and those added from chat (stored). Task-force rooms made from chat live here
    too, from `!room create` to `!room close`."""

    def __init__(self, config: Config, store: Store, gateway: RoomAdmin) -> None:
        self.config = config
        self.store = store
        self.gateway = gateway
        self.by_key: dict[str, ManagedRoom] = {}
        self.by_id: dict[str, ManagedRoom] = {}
        self.chat_routes: list[tuple[str, str]] = []
        self._unchecked: list[ManagedRoom] = []  # taken as stored: checked after first sync
        # Rooms whose creator is not the bot and keeps unlimited power (room version 12 on),
        # by key: shown by `!rooms`, audited and alerted to the admins (`revalidate`).
        self.flagged: dict[str, str] = {}
        self._alerted: set[tuple[str, str]] = set()
        # Task-force rooms the start did not restore, by key, and why: told to the admins
        # once, after the first sync (`revalidate`).
        self.skipped: dict[str, str] = {}
        # Told when a task-force room is created or closed: the room keys changed.
        self.listeners: list[Callable[[], None]] = []

    async def _flag(self, key: str, room_id: str, warnings: list[str]) -> None:
        """Record, and audit once per start, what provisioning could not put right."""
        if not warnings:
            self.flagged.pop(key, None)
            return
        text = "; ".join(warnings)
        if self.flagged.get(key) != text:
            await in_thread(
                self.store.append_audit,
                "liaison-bot",
                "room.creator_power",
                key,
                {"room_id": room_id, "warning": text},
            )
        self.flagged[key] = text

    def _add(self, managed: ManagedRoom) -> None:
        self.by_key[managed.key] = managed
        self.by_id[managed.room_id] = managed

    def managed(self, key: str) -> ManagedRoom:
        """The room with this key, or an error naming the keys there are."""
        managed = self.by_key.get(key)
        if managed is None:
            keys = ", ".join(self.by_key) or "none"
            raise CommandError(f"no managed room {key!r} (rooms: {keys})")
        return managed

    def route_targets(self) -> dict[str, list[str]]:
        """Configured routes and those added from chat, source key -> target keys."""
        merged = self.config.route_targets()
        for source, target in self.chat_routes:
            targets = merged.setdefault(source, [])
            if target not in targets:
                targets.append(target)
        return merged

    def targets_of(self, room_key: str) -> list[str]:
        """The route targets of a room that are managed rooms now."""
        return [t for t in self.route_targets().get(room_key, []) if t in self.by_key]

    # ------------------------------------------------------------ start-up

    async def provision_all(self) -> None:
        """Bring every configured room to its state (creating what is missing), then
        restore the task-force rooms made from chat. A configured room that cannot be
        provisioned stops the start; a task-force room is logged and skipped.

        A room the database holds exactly as configured, that the bot is still in, is taken
        at once and its state checked after the first sync (`revalidate`): only the bot can
        change a managed room's protected state (its power levels, and the homeserver gate),
        so a restart need not read a thousand rooms' state before it answers anyone. New,
        changed or adopted rooms are provisioned before the start goes on, PROVISIONING at
        a time."""
        joined = await self.gateway.joined_rooms()
        records, refused = await in_thread(self.store.rooms_and_refused)
        stored = {r.key: r for r in records}
        unverified = set(refused)
        found: dict[int, ManagedRoom] = {}
        todo = []
        for i, cfg in enumerate(self.config.rooms):
            if cfg.key in unverified:
                # Taken for missing, it would be created anew and the real room abandoned.
                raise StartupError(
                    f"rooms[{i}] ({cfg.key}): its row in the database does not verify (its "
                    "room id or label was changed outside the bot?); not started. Restore the "
                    "database from a backup, or delete the row to have the room provisioned "
                    "again from the config."
                )
            record = stored.get(cfg.key)
            policy_room = cfg.policy_room(self.config.home_server)
            if record is not None and record.label == policy_room.label.banner:
                # The same words as on record at another rank: the schemes changed under
                # the room (a site schemes file), not the config; that raises or lowers
                # nothing by itself.
                why = record_mismatch(policy_room.label, record.label, record.scheme, record.rank)
                if why is not None:
                    await in_thread(
                        self.store.append_audit,
                        "liaison-bot",
                        "room.label.changed",
                        cfg.key,
                        {
                            "room_id": record.room_id,
                            "rank": record.rank,
                            "reason": why,
                            "reason_code": "label.rank_changed",
                        },
                    )
                    raise StartupError(
                        f"rooms[{i}] ({cfg.key}): its label is {why}; not started. Keep the "
                        "scheme's ranks, or give the room the label it is to have in the config."
                    )
            if (
                record is not None
                and record.room_id is not None
                and record.room_id in joined
                and cfg.room_id in (None, record.room_id)
                and record == _record(cfg.key, cfg.name, policy_room, record.room_id)
            ):
                found[i] = ManagedRoom(cfg.key, cfg.name, policy_room, record.room_id)
                self._unchecked.append(found[i])
            else:
                todo.append((i, cfg, record, policy_room))
        limit = asyncio.Semaphore(PROVISIONING)
        done = len(found)

        async def bring(i: int, cfg: RoomConfig, record: RoomRecord | None, room: Room) -> None:
            nonlocal done
            async with limit:
                warnings: list[str] = []
                try:
                    room_id, changed = await provision(
                        self.gateway,
                        key=cfg.key,
                        name=cfg.name,
                        room=room,
                        room_id=cfg.room_id or (record.room_id if record else None),
                        previous_rank=record.rank if record else None,
                        joined=joined,
                        warnings=warnings,
                    )
                except HomeserverError as exc:
                    raise StartupError(f"rooms[{i}] ({cfg.key}): {exc}") from None
                except ProvisionError as exc:
                    await in_thread(
                        self.store.append_audit,
                        "liaison-bot",
                        "room.provision.refused",
                        cfg.key,
                        {
                            "room_id": record.room_id if record else None,
                            "reason": str(exc),
                            "reason_code": exc.code,
                        },
                    )
                    raise StartupError(f"rooms[{i}]: {exc}") from None
                await in_thread(self.store.save_room, _record(cfg.key, cfg.name, room, room_id))
                await self._flag(cfg.key, room_id, warnings)
            found[i] = ManagedRoom(cfg.key, cfg.name, room, room_id)
            if changed:
                log.info("room %s (%s): %s", cfg.key, room_id, ", ".join(changed))
            done += 1
            if done % 20 == 0 or done == len(self.config.rooms):
                log.info("rooms provisioned: %d/%d", done, len(self.config.rooms))

        # Every room started is finished (and saved) before a failure stops the start.
        outcomes = await asyncio.gather(*(bring(*job) for job in todo), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        if not todo:
            log.info(
                "rooms provisioned: %d/%d (as stored; state checked after the first sync)",
                done,
                len(self.config.rooms),
            )
        for i in sorted(found):  # in the config's order, as `!rooms` lists them
            self._add(found[i])
        self.chat_routes = await in_thread(self.store.chat_routes)
        for record in stored.values():
            if (
                record.origin is not Origin.CHAT
                or record.closed_at is not None
                or not record.room_id
            ):
                continue
            try:
                label = parse_marking(record.label, extra_caveats=self.config.bot.caveats)
                changed_label = record_mismatch(label, record.label, record.scheme, record.rank)
                if changed_label is not None:
                    await self._skip_changed(record, changed_label)
                    continue
                policy_room = make_room(
                    label, record.audience, record.servers or (self.config.home_server,)
                )
                if record.room_id in joined:
                    managed = ManagedRoom(
                        record.key, record.name, policy_room, record.room_id, Origin.CHAT
                    )
                    self._unchecked.append(managed)
                    self._add(managed)
                    continue
                room_id, _ = await provision(
                    self.gateway,
                    key=record.key,
                    name=record.name,
                    room=policy_room,
                    room_id=record.room_id,
                    previous_rank=record.rank,
                    joined=joined,
                )
            except (MarkingError, HomeserverError, ProvisionError) as exc:
                log.error("task-force room %s not restored: %s", record.key, exc)
                self.skipped[record.key] = f"not restored: {exc}"
                continue
            self._add(ManagedRoom(record.key, record.name, policy_room, room_id, Origin.CHAT))

    async def _skip_changed(self, record: RoomRecord, why: str) -> None:
        """A task-force room whose label the schemes in force read at another rank (or
        otherwise) is not used: taken at the new rank, it would be raised or lowered
        without anyone deciding so. Audited now; told to the admins by `revalidate`."""
        log.error(
            "task-force room %s (%s) not restored: its label is %s", record.key, record.room_id, why
        )
        self.skipped[record.key] = f"not restored: its label is {why}"
        await in_thread(
            self.store.append_audit,
            "liaison-bot",
            "room.label.changed",
            record.key,
            {
                "room_id": record.room_id,
                "label": record.label,
                "scheme": record.scheme,
                "rank": record.rank,
                "reason": why,
                "reason_code": "label.rank_changed",
            },
        )

    async def revalidate(self, alert: Callable[[Document], Awaitable[None]]) -> None:
        """Check the rooms taken as stored at start against their state on the server,
        PROVISIONING at a time, and put back whatever drifted. Drift means someone changed
        what only the bot may change (the gate was bypassed, or the bot's token is
        elsewhere): the admins are alerted, as they are for a room that could not be
        checked."""
        rooms, self._unchecked = self._unchecked, []
        limit = asyncio.Semaphore(PROVISIONING)
        problems: list[tuple[str, str]] = []

        async def check(managed: ManagedRoom) -> None:
            async with limit:
                warnings: list[str] = []
                try:
                    _, changed = await provision(
                        self.gateway,
                        key=managed.key,
                        name=managed.name,
                        room=managed.policy,
                        room_id=managed.room_id,
                        previous_rank=None,
                        joined={managed.room_id},
                        warnings=warnings,
                    )
                except (HomeserverError, ProvisionError) as exc:
                    log.error("room %s (%s) not checked: %s", managed.key, managed.room_id, exc)
                    problems.append((managed.key, f"could not be checked ({exc})"))
                    return
                await self._flag(managed.key, managed.room_id, warnings)
            if changed:
                log.warning(
                    "room %s (%s) had drifted; put back: %s",
                    managed.key,
                    managed.room_id,
                    ", ".join(changed),
                )
                problems.append((managed.key, f"had been changed; put back: {', '.join(changed)}"))

        await asyncio.gather(*(check(m) for m in rooms))
        if rooms:
            log.info("state of %d room(s) taken as stored checked", len(rooms))
        for key, warning in sorted(self.flagged.items()):
            if (key, warning) not in self._alerted:  # once per room and warning
                self._alerted.add((key, warning))
                problems.append((key, warning))
        # Random transaction ids: a start's check, not an event, finds these, and a later
        # start's findings are news of their own.
        if problems:
            await alert(
                doc(
                    para("⚠ Managed rooms not as the bot left them (checked after a restart):"),
                    items((Strong(key), ": ", what) for key, what in sorted(problems)),
                )
            )
        if self.skipped:
            skipped, self.skipped = self.skipped, {}
            await alert(
                doc(
                    para("⚠ Task-force rooms not restored at start (not in use, not relayed to):"),
                    items((Strong(key), ": ", what) for key, what in sorted(skipped.items())),
                )
            )

    # ------------------------------------------------------------ from chat

    async def create(
        self, actor: str, key: RoomKey, name: str, label_text: str, audience: Sequence[str] | None
    ) -> ManagedRoom:
        """A task-force room: created, provisioned and stored, or nothing at all."""
        if key in self.by_key or await in_thread(self.store.room, key) is not None:
            raise CommandError(f"a room with key {key!r} exists already; choose another key")
        try:
            label = parse_marking(label_text, extra_caveats=self.config.bot.caveats)
            policy_room = make_room(
                label,
                parse_audience(audience) if audience else None,
                (self.config.home_server,),  # a task-force room: the bot's own server
            )
        except MarkingError as exc:
            raise CommandError(f"LABEL: {exc}") from None
        try:
            room_id, _ = await provision(
                self.gateway,
                key=key,
                name=name,
                room=policy_room,
                room_id=None,
                previous_rank=None,
                joined=set(),
            )
        except HomeserverError as exc:
            raise CommandError(f"the homeserver did not create the room: {exc.message}") from None
        await in_thread(
            self.store.save_room, _record(key, name, policy_room, room_id, Origin.CHAT), actor
        )
        managed = ManagedRoom(key, name, policy_room, room_id, Origin.CHAT)
        self._add(managed)
        self._changed()
        return managed

    async def close(self, actor: str, key: str) -> list[str]:
        """Remove everyone from a task-force room and retire it with its routes."""
        managed = self.managed(key)
        if managed.origin is not Origin.CHAT:
            raise CommandError(f"{key} comes from the config file; remove it there")
        removed: list[str] = []
        for user_id in self.gateway.members(managed.room_id) or {}:
            if user_id == self.gateway.user_id:
                continue
            try:
                await self.gateway.kick(managed.room_id, user_id, "room closed")
                removed.append(user_id)
            except HomeserverError as exc:
                log.warning("could not remove %s from closed %s: %s", user_id, key, exc)
        await in_thread(self.store.close_room, actor, key, removed)
        self.chat_routes = [(a, b) for a, b in self.chat_routes if key not in (a, b)]
        del self.by_key[key]
        self.by_id.pop(managed.room_id, None)
        self._changed()
        return removed

    def _changed(self) -> None:
        for listener in self.listeners:
            listener()

    async def change_route(self, actor: str, source: str, target: str, add: bool) -> None:
        self.managed(source)
        self.managed(target)
        if source == target:
            raise CommandError("a room cannot route to itself")
        if not add and target in self.config.route_targets().get(source, []):
            raise CommandError(f"{source} → {target} comes from the config file; remove it there")
        if add:
            if target in self.route_targets().get(source, []):
                raise CommandError(f"{source} → {target} exists already")
            await in_thread(self.store.add_route, actor, source, target)
            self.chat_routes.append((source, target))
        else:
            if not await in_thread(self.store.remove_route, actor, source, target):
                raise CommandError(f"no chat route {source} → {target} (see !routes)")
            self.chat_routes.remove((source, target))

    # ------------------------------------------------------------ views

    def summaries(self) -> list[RoomSummary]:
        out = []
        for managed in self.by_key.values():
            members = self.gateway.members(managed.room_id) or {}
            flag = self.flagged.get(managed.key)
            out.append(
                RoomSummary(
                    managed.key,
                    f"{managed.name} — ⚠ {flag}" if flag else managed.name,
                    managed.banner,
                    managed.policy.rank,
                    sum(1 for joined in members.values() if joined),
                    managed.room_id,
                )
            )
        return out

    def routes(self) -> list[RouteSummary]:
        out = [RouteSummary(k, tuple(v)) for k, v in self.config.route_targets().items()]
        chat: dict[str, list[str]] = {}
        for source, target in self.chat_routes:
            chat.setdefault(source, []).append(target)
        out += [RouteSummary(k, tuple(v), Origin.CHAT) for k, v in chat.items()]
        return out


def _record(
    key: RoomKey, name: str, room: Room, room_id: RoomId, origin: Origin = Origin.CONFIG
) -> RoomRecord:
    label = room.label
    return RoomRecord(
        key=key,
        name=name,
        label=label.banner,
        scheme=label.scheme,
        rank=label.rank,
        audience=tuple(sorted(room.audience)),
        room_id=room_id,
        origin=origin,
        servers=tuple(sorted(room.servers)) if room.servers is not None else None,
    )
