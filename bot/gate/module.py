"""The Synapse module: the homeserver refuses what the bot would refuse.

Loaded by Synapse from ``homeserver.yaml``::

    modules:
      - module: bot.gate.LiaisonGate
        config:
          bot_user_id: "@liaison:example.org"
          database: "postgresql+psycopg://…"
          register_key: "ed25519:…"  # rows that do not verify with it admit nobody

Three layers, because each alone has a gap:

- spam-checker callbacks (`user_may_invite`, `federated_user_may_invite`,
  `user_may_join_room`, `user_may_send_state_event`) refuse early with a readable error, but
  Synapse skips them for server admins and for state sent while a room is created;
- `check_event_allowed` (third-party rules) sees every event this server creates, whoever
  asks (a server admin, the admin API's join and make-room-admin), and applies the same
  rules to membership and protected state. It does not see events other servers send (only
  knocks): that is why protected state is also checked for its *content* — nobody but the
  bot may ever hold the power to invite, so no server can make an invite the room's own
  auth rules accept;
- `check_event_for_spam` is the one callback Synapse runs on events other servers send
  (`FederationBase._check_sigs_and_hash`: /send, /send_join, /invite, and events it
  fetches). Federated membership and protected state of a managed room are judged there
  with the same rules: a remote user whose clearance was revoked after their invite is
  refused when their server asks this one, the room's resident, to let them join
  (/send_join answers 403 with the reason), and anything else refused is soft-failed
  (kept out of this server's view of the room).

Reads of the register run in a thread pool of the gate's own, never on the reactor and
never in Synapse's shared pool, unless the answer is already in the gate's short cache
(then it is given at once: a hop to a thread and back costs more than the decision). The
label event comes from the state Synapse hands over or keeps cached, and a room's label,
once found, is reused for LABEL_TTL seconds: only its own bot may ever change it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from typing import Any, Literal

from cachetools import TTLCache
from synapse.api.errors import Codes, SynapseError
from synapse.config._base import ConfigError
from synapse.events import EventBase
from synapse.logging.context import current_context
from synapse.module_api import NOT_SPAM, ModuleApi
from twisted.python.threadpool import ThreadPool

from bot.gate.config import (
    MODULE_PATH,
    GateConfig,
    GateConfigError,
    parse_gate_config,
    read_registers_file,
)
from bot.gate.rules import (
    LABEL_EVENT,
    PROTECTED_STATE,
    REASON_FIELD,
    UNLABELLED,
    Gate,
    Register,
    RoomLabel,
    SchemaIncompatible,
    SchemaTooOld,
    Verdict,
)

log = logging.getLogger(__name__)

Refusal = tuple[Codes, dict[str, Any]]

READ_THREADS = 4  # concurrent register reads; more waits in line, in this pool only
# How long a room's label, once found, is reused. A label only ever changes by its own
# bot (the rules refuse any other sender), so this bounds only how long a state reset
# would go unnoticed; an unlabelled room is always asked again, so a label counts at once.
LABEL_TTL = 30.0

# The federation endpoint through which a remote server asks this one, the room's
# resident, to let its user in (Synapse runs check_event_for_spam on that join).
_SEND_JOIN = re.compile(r"^/_matrix/federation/v[12]/send_join/")


def _refusal(verdict: Verdict) -> Refusal:
    # "error" replaces Synapse's generic text ("Invites have been disabled on this server").
    return Codes.FORBIDDEN, {"error": verdict.reason, REASON_FIELD: verdict.reason}


def _forbidden(verdict: Verdict) -> SynapseError:
    return SynapseError(403, verdict.reason, Codes.FORBIDDEN, {REASON_FIELD: verdict.reason})


def _in_send_join() -> bool:
    """Whether the request being served is a remote server's /send_join. The module API
    does not say which path an event came by; the request's logging context does (and if
    a later Synapse stops carrying it, a refused join is still soft-failed)."""
    request = getattr(current_context(), "request", None)
    return bool(_SEND_JOIN.match(str(getattr(request, "url", "") or "")))


class _Registers:
    """The registers of the config, plus those of a registers file, reread when the file
    changes (a new inode, as an atomic rename gives, or a new mtime or size); a bad file
    keeps the last good set and says so."""

    def __init__(self, config: GateConfig) -> None:
        self._config = config
        self._static: dict[str, Register] = {
            s.bot_user_id: Register(s, config.cache_ttl_seconds) for s in config.static_registers()
        }
        self._file = config.registers_file
        self._seen: tuple[int, float, int] | None = None
        self._from_file: dict[str, Register] = {}
        self._lock = threading.Lock()

    def static(self) -> list[Register]:
        """The registers written into homeserver.yaml itself."""
        return list(self._static.values())

    def __call__(self) -> dict[str, Register]:
        if self._file is None:
            return self._static
        try:
            stat = os.stat(self._file)
            seen = (stat.st_ino, stat.st_mtime, stat.st_size)
        except OSError as exc:
            # Gone or unreadable: keep the last good set (a deleted file must not quietly
            # stop enforcement for the bots it listed), and say so once per change.
            with self._lock:
                if self._seen is not None:
                    log.error(
                        "liaison gate: registers file %s: %s; keeping the last", self._file, exc
                    )
                    self._seen = None
                return {**self._from_file, **self._static}
        with self._lock:
            if seen != self._seen:
                self._reload(seen)
            return {**self._from_file, **self._static}

    def _reload(self, seen: tuple[int, float, int]) -> None:
        try:
            specs = read_registers_file(self._file) if self._file else []
        except GateConfigError as exc:
            log.error("liaison gate: registers file not reloaded, keeping the last: %s", exc)
            self._seen = seen
            return
        old = self._from_file
        fresh: dict[str, Register] = {}
        for spec in specs:
            kept = old.get(spec.bot_user_id)
            fresh[spec.bot_user_id] = (
                kept
                if kept is not None and kept.spec == spec
                else Register(spec, self._config.cache_ttl_seconds)
            )
        for bot, register in old.items():
            if fresh.get(bot) is not register:
                register.close()
        self._from_file = fresh
        self._seen = seen
        log.info("liaison gate: %d register(s) from %s", len(fresh), self._file)


class LiaisonGate:
    """See the module docstring."""

    def __init__(self, config: GateConfig, api: ModuleApi) -> None:
        self._api = api
        self._registers = _Registers(config)
        # The registers named in homeserver.yaml are checked now: a database at an older
        # schema than this gate reads, or a newer one that changed what it reads, stops
        # Synapse's start with the reason (a registers file's come and go: checked at
        # their first read, failing closed).
        for register in self._registers.static():
            try:
                register.check_at_start()
            except (SchemaTooOld, SchemaIncompatible) as exc:
                for opened in self._registers.static():
                    opened.close()
                raise ConfigError(f"modules[{MODULE_PATH}]: {exc}") from None
        # Register reads get threads of their own: Synapse's shared pool (10 threads) also
        # encodes every response, so a slow register must not stall the whole homeserver.
        self._pool = ThreadPool(minthreads=1, maxthreads=READ_THREADS, name="liaison-gate")
        self._pool.start()
        reactor: Any = api._hs.get_reactor()  # the module API offers no shutdown hook
        reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)
        self._gate = Gate(self._registers, server_name=api.server_name)
        # Read and written on the reactor thread only (every callback runs there).
        self._labels: TTLCache[str, RoomLabel] = TTLCache(maxsize=10_000, ttl=LABEL_TTL)
        api.register_spam_checker_callbacks(
            user_may_invite=self.user_may_invite,
            federated_user_may_invite=self.federated_user_may_invite,
            user_may_join_room=self.user_may_join_room,
            user_may_send_state_event=self.user_may_send_state_event,
            check_event_for_spam=self.check_event_for_spam,
        )
        api.register_third_party_rules_callbacks(check_event_allowed=self.check_event_allowed)
        bots = ", ".join(
            f"{bot} (rows {'verified' if r.spec.register_key else 'NOT verified'})"
            for bot, r in self._registers().items()
        )
        log.info("liaison gate enforcing the clearance registers of: %s", bots or "none yet")

    @staticmethod
    def parse_config(config: Mapping[str, Any]) -> GateConfig:
        try:
            return parse_gate_config(config, f"modules[{MODULE_PATH}].config")
        except GateConfigError as exc:
            raise ConfigError(str(exc)) from None

    # ------------------------------------------------------------ what the server knows

    async def _label(self, room_id: str) -> RoomLabel:
        """The label event of the room's current state, if the server has the room."""
        cached = self._labels.get(room_id)
        if cached is not None:
            return cached
        try:
            state = await self._api.get_room_state(room_id, [(LABEL_EVENT, "")])
        except Exception as exc:  # a room this server is not in: nothing to read
            log.debug("liaison gate: no state for %s: %s", room_id, exc)
            return UNLABELLED
        event = state.get((LABEL_EVENT, ""))
        if event is None:
            return UNLABELLED
        label = RoomLabel(True, event.sender)
        self._labels[room_id] = label
        return label

    async def _membership(self, room_id: str, user_id: str) -> str | None:
        """The user's membership in the room's current state, if any (None if unknown)."""
        try:
            state = await self._api.get_room_state(room_id, [("m.room.member", user_id)])
        except Exception as exc:
            log.debug("liaison gate: no membership of %s in %s: %s", user_id, room_id, exc)
            return None
        event = state.get(("m.room.member", user_id))
        return None if event is None else str(event.content.get("membership"))

    @staticmethod
    def _label_in(state: Mapping[tuple[str, str], EventBase]) -> RoomLabel:
        event = state.get((LABEL_EVENT, ""))
        return RoomLabel(True, event.sender) if event is not None else UNLABELLED

    async def _enter(self, user_id: str, room_id: str, label: RoomLabel, what: str) -> Verdict:
        verdict = self._gate.may_enter_cached(user_id, room_id, label)
        if verdict is None:
            verdict = await self._api.defer_to_threadpool(
                self._pool, self._gate.may_enter, user_id, room_id, label
            )
        if not verdict:
            log.warning("liaison gate refused %s: %s", what, verdict.reason)
        return verdict

    # ------------------------------------------------------------ spam checker

    async def user_may_invite(
        self, inviter: str, invitee: str, room_id: str
    ) -> Literal["NOT_SPAM"] | Refusal:
        label = await self._label(room_id)
        verdict = await self._enter(
            invitee, room_id, label, f"{inviter}'s invite of {invitee} to {room_id}"
        )
        return NOT_SPAM if verdict else _refusal(verdict)

    async def federated_user_may_invite(self, event: EventBase) -> Literal["NOT_SPAM"] | Refusal:
        label = await self._label(event.room_id)
        if not label.labelled:
            # A room hosted elsewhere: its label, if any, travels in the invite's stripped state.
            for stripped in event.unsigned.get("invite_room_state", []) or []:
                if isinstance(stripped, dict) and stripped.get("type") == LABEL_EVENT:
                    label = RoomLabel(True, str(stripped.get("sender")))
        target = event.state_key or ""
        verdict = await self._enter(
            target, event.room_id, label, f"{event.sender}'s federated invite of {target}"
        )
        return NOT_SPAM if verdict else _refusal(verdict)

    async def user_may_join_room(
        self, user_id: str, room_id: str, is_invited: bool
    ) -> Literal["NOT_SPAM"] | Refusal:
        label = await self._label(room_id)
        verdict = await self._enter(user_id, room_id, label, f"{user_id}'s join of {room_id}")
        return NOT_SPAM if verdict else _refusal(verdict)

    async def user_may_send_state_event(
        self, user_id: str, room_id: str, event_type: str, state_key: str, content: Any
    ) -> Literal["NOT_SPAM"]:
        if event_type not in PROTECTED_STATE:
            return NOT_SPAM
        label = await self._label(room_id)
        verdict: Verdict = await self._api.defer_to_threadpool(
            self._pool, self._gate.may_set_state, user_id, room_id, event_type, label, content
        )
        if not verdict:
            log.warning("liaison gate refused %s from %s: %s", event_type, user_id, verdict.reason)
            # This callback may only return a bare code (Synapse then says "You are not
            # permitted to send the state event"); raising gives the client the reason, and
            # Synapse lets the error through to the request as it does for event checks.
            raise _forbidden(verdict)
        return NOT_SPAM

    async def check_event_for_spam(self, event: EventBase) -> Literal["NOT_SPAM"] | Refusal:
        """Membership and protected state that other servers send (see the module
        docstring); this server's own events are judged by `check_event_allowed`."""
        if not event.is_state() or self._api.is_mine(event.sender):
            return NOT_SPAM
        if event.type == "m.room.member":
            membership = event.content.get("membership")
            target = event.state_key or ""
            if membership not in ("invite", "join", "knock"):
                return NOT_SPAM  # leaving, kicks and bans always pass
            if membership == "invite" and self._api.is_mine(target):
                return NOT_SPAM  # federated_user_may_invite judges it, stripped state and all
            label = await self._label(event.room_id)
            verdict = self._gate.may_enter_cached(target, event.room_id, label)
            if verdict is None:
                verdict = await self._api.defer_to_threadpool(
                    self._pool, self._gate.may_enter, target, event.room_id, label
                )
            # Asked only of a refusal (a room this server manages, never one it is still
            # joining, whose member list it would have to wait for): a profile change of
            # someone already in is not an entry.
            if (
                not verdict
                and membership == "join"
                and await self._membership(event.room_id, target) == "join"
            ):
                return NOT_SPAM
            if not verdict:
                log.warning(
                    "liaison gate refused federated %s of %s by %s: %s",
                    membership,
                    target,
                    event.sender,
                    verdict.reason,
                )
        elif event.type in PROTECTED_STATE:
            label = await self._label(event.room_id)
            verdict = await self._api.defer_to_threadpool(
                self._pool,
                lambda: self._gate.may_set_state(
                    event.sender,
                    event.room_id,
                    event.type,
                    label,
                    event.content,
                    federated=True,
                ),
            )
            if not verdict:
                log.warning("liaison gate refused federated %s: %s", event.type, verdict.reason)
        else:
            return NOT_SPAM
        if verdict:
            return NOT_SPAM
        if _in_send_join():
            raise _forbidden(verdict)  # the joining server is told, and never joins
        return _refusal(verdict)  # soft-failed: kept out of this server's view of the room

    # ------------------------------------------------------------ every event

    async def check_event_allowed(
        self, event: EventBase, state: Mapping[tuple[str, str], EventBase]
    ) -> tuple[bool, dict[str, Any] | None]:
        """The backstop: membership and protected state, whoever made the event. Raises the
        403 itself, so the client reads the reason rather than "not allowed in this context"."""
        if not event.is_state():
            return True, None
        label = self._label_in(state)
        if label.labelled:
            self._labels[event.room_id] = label  # the state Synapse hands over is current
        if event.type == LABEL_EVENT and not label.labelled:
            label = UNLABELLED  # the label being set now is judged by may_set_state
        if event.type == "m.room.member":
            membership = event.content.get("membership")
            if membership not in ("invite", "join", "knock"):
                return True, None  # leaving, kicks and bans always pass
            target = event.state_key or ""
            if membership == "join" and self._already_joined(state, target):
                return True, None  # a profile change, not an entry
            verdict = await self._enter(
                target, event.room_id, label, f"{membership} of {target} by {event.sender}"
            )
        elif event.type in PROTECTED_STATE:
            verdict = await self._api.defer_to_threadpool(
                self._pool,
                self._gate.may_set_state,
                event.sender,
                event.room_id,
                event.type,
                label,
                event.content,
            )
            if not verdict:
                log.warning("liaison gate refused %s: %s", event.type, verdict.reason)
        else:
            return True, None
        if verdict:
            return True, None
        raise _forbidden(verdict)

    @staticmethod
    def _already_joined(state: Mapping[tuple[str, str], EventBase], user_id: str) -> bool:
        current = state.get(("m.room.member", user_id))
        return current is not None and current.content.get("membership") == "join"


__all__ = ["LiaisonGate"]
