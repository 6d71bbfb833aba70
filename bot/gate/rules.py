"""What the gate decides, apart from Synapse: who may enter a managed room, who may change it.

Synapse-free so it can be tested without a homeserver; `bot.gate.module` feeds it what the
homeserver knows (the room's label event and its sender) and runs it in a worker thread,
since it reads the register. The membership rule is `policy.may_enter`, the very function
the bot applies before it invites: there is no second implementation to drift.

Fails closed: in a room that is managed (it carries the label event, or a register lists
it), anything that stops the gate from reading the register refuses the join or invite and
says why. In a room that is not managed nothing is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Generic, TypeVar

from cachetools import TTLCache

from bot.gate.config import RegisterSpec
from bot.services.register import policy_clearance
from bot.storage.reader import RegisterReader
from bot.storage.records import ClearanceRecord, RoomRecord
from policy import MarkingError, make_room, may_enter, parse_marking, server_of

log = logging.getLogger(__name__)

LABEL_EVENT = "io.github.liaison_bot.label"

# State only the managing bot may change in its rooms: what the label is, who has power,
# how the room is encrypted, who may join, who may read history, and which servers take part.
PROTECTED_STATE = frozenset(
    {
        LABEL_EVENT,
        "m.room.power_levels",
        "m.room.encryption",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.guest_access",
        "m.room.server_acl",
        # an upgrade would spin off an unlabelled copy; a third-party invite lets a
        # federated server make a member without asking this one
        "m.room.tombstone",
        "m.room.third_party_invite",
    }
)
# What the managing bot itself must keep them at: even its own account (or a thief holding
# its token, or the admin API's make_room_admin, which sends as the room's most powerful
# local member) cannot open a managed room or hand out the power to invite.
_REQUIRED = {
    "m.room.join_rules": ("join_rule", "invite"),
    "m.room.history_visibility": ("history_visibility", "joined"),
    "m.room.guest_access": ("guest_access", "forbidden"),
}
_POWER_KEYS = ("invite", "kick", "ban", "redact", "state_default")

# Extra field of a refusal, for clients and tests that want the reason apart from the text.
REASON_FIELD = "io.github.liaison_bot.reason"


@dataclass(frozen=True, slots=True)
class Verdict:
    """An answer and its reason, shown to the refused client and written to Synapse's log."""

    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True, slots=True)
class RoomLabel:
    """What the homeserver's current state says of a room: whether it carries the label
    event, and who sent it (a room's owning bot)."""

    labelled: bool
    sender: str | None = None


UNLABELLED = RoomLabel(False)

K = TypeVar("K")
V = TypeVar("V")

_MISSING = object()


class _TtlCache(Generic[K, V]):
    """Reads reused for `ttl` seconds, bounded; locked, as Synapse calls from its threads."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._cache: TTLCache[K, V] | None = (
            TTLCache(maxsize=10_000, ttl=ttl, timer=clock) if ttl > 0 else None
        )
        self._lock = threading.Lock()

    def get(self, key: K) -> tuple[bool, V | None]:
        if self._cache is None:
            return False, None
        with self._lock:
            value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            return False, None
        return True, value  # type: ignore[return-value]

    def put(self, key: K, value: V) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache[key] = value

    def drop(self, key: K) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache.pop(key, None)


class Register:
    """One bot's register as the gate reads it: opened lazily, read through a short cache."""

    def __init__(
        self,
        spec: RegisterSpec,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        open_reader: Callable[[str], RegisterReader] = RegisterReader.from_url,
    ) -> None:
        self.spec = spec
        self._open_reader = open_reader
        self._reader: RegisterReader | None = None
        self._lock = threading.Lock()
        self._rooms: _TtlCache[str, RoomRecord | None] = _TtlCache(ttl, clock)
        self._clearances: _TtlCache[str, ClearanceRecord] = _TtlCache(ttl, clock)

    @property
    def bot(self) -> str:
        return self.spec.bot_user_id

    def _read(self) -> RegisterReader:
        with self._lock:
            if self._reader is None:
                self._reader = self._open_reader(self.spec.database)
            return self._reader

    def room(self, room_id: str, *, fresh: bool) -> RoomRecord | None:
        """The room on record; `fresh` rereads a cached absence (a labelled room must be
        found, and may have been saved a moment ago)."""
        hit, record = self._rooms.get(room_id)
        if hit and (record is not None or not fresh):
            return record
        record = self._read().room_by_id(room_id)
        self._rooms.put(room_id, record)
        return record

    def clearance(self, user_id: str) -> ClearanceRecord | None:
        """A record on file is reused for the TTL; no record is always asked again, so a
        grant the bot just made counts for the invite it makes next."""
        hit, record = self._clearances.get(user_id)
        if hit and record is not None:
            return record
        record = self._read().clearance(user_id)
        if record is not None:
            self._clearances.put(user_id, record)
        return record

    def forget(self, user_id: str) -> None:
        """Drop a cached record (a refusal must not rest on an old one)."""
        self._clearances.drop(user_id)

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


def _failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


class Gate:
    """The decisions; `registers` gives the current registers by bot (it may change when a
    registers file does)."""

    def __init__(
        self,
        registers: Callable[[], dict[str, Register]],
        today: Callable[[], date] = lambda: datetime.now(UTC).date(),
        server_name: str | None = None,
    ) -> None:
        self._registers = registers
        self._today = today
        self._server_name = server_name  # this homeserver's; None: every bot is local

    def _remote(self, label: RoomLabel) -> str | None:
        """The server of a label set by a bot on another homeserver (whose own gate judges
        its room: this one cannot read that register), else None."""
        if not label.labelled or self._server_name is None or label.sender is None:
            return None
        server = server_of(label.sender)
        return server if server and server != self._server_name else None

    def _listed(self, room_id: str) -> str | None:
        """The bot whose register lists the room (a failed read counts as not listed:
        the caller falls back to the label, which judges a local room anyway)."""
        for bot, register in self._registers().items():
            try:
                if register.room(room_id, fresh=False) is not None:
                    return bot
            except Exception as exc:
                log.warning("register of %s unreadable (%s)", bot, _failure(exc))
        return None

    def _candidates(self, room_id: str, label: RoomLabel) -> tuple[list[Register], Verdict | None]:
        registers = self._registers()
        if not label.labelled:
            return list(registers.values()), None
        owner = registers.get(label.sender or "")
        if owner is None:
            listed = self._listed(room_id)
            if listed is not None:  # ours, whoever set the label: judged here
                return [registers[listed]], None
            remote = self._remote(label)
            if remote is not None:
                return [], Verdict(
                    True, f"{room_id} is managed by {label.sender}: {remote}'s gate judges it"
                )
            return [], Verdict(
                False,
                f"{room_id} carries a liaison label set by {label.sender}, "
                "which is not a bot this homeserver's gate knows",
            )
        return [owner], None

    def _managing(
        self, room_id: str, label: RoomLabel
    ) -> tuple[Register | None, RoomRecord | None, Verdict | None]:
        """Which register manages the room and its record; or the verdict that settles it
        already: a refusal when that cannot be told for a managed room, an allow for a room
        another homeserver's gate judges. (None, None, None): not a managed room."""
        candidates, refusal = self._candidates(room_id, label)
        if refusal is not None:
            return None, None, refusal
        for register in candidates:
            try:
                record = register.room(room_id, fresh=label.labelled)
            except Exception as exc:
                if label.labelled:
                    return (
                        register,
                        None,
                        Verdict(
                            False,
                            f"the clearance register of {register.bot} cannot be read "
                            f"({_failure(exc)}); managed room {room_id} admits nobody until it can",
                        ),
                    )
                log.warning(
                    "register of %s unreadable (%s): %s has no label, treated as unmanaged",
                    register.bot,
                    _failure(exc),
                    room_id,
                )
                continue
            if record is not None:
                return register, record, None
            if label.labelled:
                return (
                    register,
                    None,
                    Verdict(
                        False,
                        f"{room_id} carries {register.bot}'s label but its register does not "
                        "list the room",
                    ),
                )
        return None, None, None

    def may_enter(self, user_id: str, room_id: str, label: RoomLabel) -> Verdict:
        """May `user_id` be invited into, or join, the room."""
        registers = self._registers()
        if user_id in registers:
            return Verdict(True, f"{user_id} is a liaison bot")
        register, record, settled = self._managing(room_id, label)
        if settled is not None:  # a refusal, or another homeserver's room to judge
            return settled
        if register is None or record is None:
            return Verdict(True, f"{room_id} is not a managed room")
        where = f"{record.key} ({record.label})"
        if record.closed_at is not None:
            return Verdict(False, f"{where} was closed on {record.closed_at:%Y-%m-%d}")
        try:
            label_on_record = parse_marking(record.label, extra_caveats=register.spec.caveats)
            room = make_room(label_on_record, record.audience, record.servers)
        except MarkingError as exc:
            return Verdict(False, f"the label on record for {where} cannot be read: {exc}")
        try:
            clearance = register.clearance(user_id)
        except Exception as exc:
            return Verdict(
                False,
                f"the clearance register of {register.bot} cannot be read ({_failure(exc)}); "
                f"{where} admits nobody until it can",
            )
        spec = register.spec
        decision = may_enter(
            user_id,
            policy_clearance(clearance) if clearance is not None else None,
            room,
            self._today(),
            admins=frozenset(spec.admins) if record.key == spec.admin_room else None,
        )
        if not decision.allowed and clearance is not None:
            register.forget(user_id)
        verb = "may enter" if decision.allowed else "may not enter"
        return Verdict(decision.allowed, f"{user_id} {verb} {where}: {decision.reason}")

    def may_set_state(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        label: RoomLabel,
        content: Mapping[str, Any] | None = None,
    ) -> Verdict:
        """May `sender` send this state event: protected state of a managed room only by
        the bot that manages it, and even then only with content that keeps the room
        closed (`content_keeps_room_closed`); the label event only by a bot, anywhere."""
        verdict, managing = self._may_set_state(sender, room_id, event_type, label)
        if verdict.allowed and managing and content is not None:
            problem = content_keeps_room_closed(event_type, content, sender)
            if problem is not None:
                return Verdict(False, f"{event_type} in managed room {room_id}: {problem}")
        return verdict

    def _may_set_state(
        self, sender: str, room_id: str, event_type: str, label: RoomLabel
    ) -> tuple[Verdict, bool]:
        """The verdict, and whether it is the managing bot's own change (whose content is
        checked next)."""
        if event_type not in PROTECTED_STATE:
            return Verdict(True, f"{event_type} is not protected"), False
        registers = self._registers()
        if event_type == LABEL_EVENT:
            if sender not in registers:
                return Verdict(
                    False, f"only a liaison bot may set {LABEL_EVENT}; {sender} is not one"
                ), False
            if label.labelled and label.sender != sender:
                return Verdict(
                    False, f"{room_id} is managed by {label.sender}, not {sender}"
                ), False
            return Verdict(True, f"{sender} is a liaison bot"), False
        if label.labelled and label.sender not in registers:
            listed = self._listed(room_id)
            if listed is not None:
                owner: str | None = listed
            elif self._remote(label):
                return Verdict(
                    True, f"{room_id} is managed on {self._remote(label)}: its gate judges"
                ), False
            else:
                owner = label.sender
        elif label.labelled:
            owner = label.sender
        else:
            register, _record, _refusal = self._managing(room_id, label)
            owner = register.bot if register is not None else None
        if owner is None:
            return Verdict(True, f"{room_id} is not a managed room"), False
        if sender == owner:
            return Verdict(True, f"{sender} manages {room_id}"), True
        return Verdict(
            False, f"only {owner} may change {event_type} in managed room {room_id}"
        ), False


def content_keeps_room_closed(
    event_type: str, content: Mapping[str, Any], owner: str
) -> str | None:
    """None when a managed room stays as closed as the bot keeps it, else what is wrong:
    join rules invite-only, history from joining, no guests, and nobody but `owner` (or a
    room creator, whom room version 12 gives unlimited power and does not list) at or
    above the power to invite, remove, ban, redact or change state."""
    required = _REQUIRED.get(event_type)
    if required is not None:
        key, value = required
        if content.get(key) != value:
            return f"{key} must stay {value!r}, not {content.get(key)!r}"
        return None
    if event_type != "m.room.power_levels":
        return None
    try:
        levels = {k: int(content.get(k, 50)) for k in _POWER_KEYS}
        users_default = int(content.get("users_default", 0))
        users = {str(u): int(v) for u, v in dict(content.get("users", {})).items()}
    except (TypeError, ValueError):
        return "power levels that are not integers"
    threshold = min(levels.values())
    if users_default >= threshold:
        return f"users_default {users_default} reaches the power to act on others ({threshold})"
    strong = sorted(u for u, level in users.items() if u != owner and level >= threshold)
    if strong:
        return f"{', '.join(strong)} would hold power only the bot may hold (>= {threshold})"
    return None


__all__ = [
    "LABEL_EVENT",
    "PROTECTED_STATE",
    "REASON_FIELD",
    "UNLABELLED",
    "Gate",
    "Register",
    "RoomLabel",
    "Verdict",
]
