"""The Synapse module: the homeserver refuses what the bot would refuse.

Loaded by Synapse from ``homeserver.yaml``::

    modules:
      - module: bot.gate.LiaisonGate
        config: {bot_user_id: "@liaison:example.org", database: "postgresql+psycopg://…"}

Two layers, because each alone has a gap:

- spam-checker callbacks (`user_may_invite`, `federated_user_may_invite`,
  `user_may_join_room`, `user_may_send_state_event`) refuse early with a readable error, but
  Synapse skips them for server admins and for state sent while a room is created;
- `check_event_allowed` (third-party rules) sees every event this server creates, whoever
  asks (a server admin, the admin API's join and make-room-admin), and applies the same
  rules to membership and protected state. It does not see events other servers send (only
  knocks): that is why protected state is also checked for its *content* — nobody but the
  bot may ever hold the power to invite, so no server can make an invite the room's own
  auth rules accept.

Reads of the register run in a thread pool of the gate's own, never on the reactor and
never in Synapse's shared pool; the label event comes from the state Synapse hands over or
keeps cached.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, Literal

from synapse.api.errors import Codes, SynapseError
from synapse.config._base import ConfigError
from synapse.events import EventBase
from synapse.module_api import NOT_SPAM, ModuleApi
from twisted.python.threadpool import ThreadPool

from bot.gate.config import GateConfig, GateConfigError, parse_gate_config, read_registers_file
from bot.gate.rules import (
    LABEL_EVENT,
    PROTECTED_STATE,
    REASON_FIELD,
    UNLABELLED,
    Gate,
    Register,
    RoomLabel,
    Verdict,
)

log = logging.getLogger(__name__)

Refusal = tuple[Codes, dict[str, Any]]

READ_THREADS = 4  # concurrent register reads; more waits in line, in this pool only


def _refusal(verdict: Verdict) -> Refusal:
    # "error" replaces Synapse's generic text ("Invites have been disabled on this server").
    return Codes.FORBIDDEN, {"error": verdict.reason, REASON_FIELD: verdict.reason}


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
        # Register reads get threads of their own: Synapse's shared pool (10 threads) also
        # encodes every response, so a slow register must not stall the whole homeserver.
        self._pool = ThreadPool(minthreads=1, maxthreads=READ_THREADS, name="liaison-gate")
        self._pool.start()
        reactor: Any = api._hs.get_reactor()  # the module API offers no shutdown hook
        reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)
        self._registers = _Registers(config)
        self._gate = Gate(self._registers, server_name=api.server_name)
        api.register_spam_checker_callbacks(
            user_may_invite=self.user_may_invite,
            federated_user_may_invite=self.federated_user_may_invite,
            user_may_join_room=self.user_may_join_room,
            user_may_send_state_event=self.user_may_send_state_event,
        )
        api.register_third_party_rules_callbacks(check_event_allowed=self.check_event_allowed)
        bots = ", ".join(self._registers()) or "none yet"
        log.info("liaison gate enforcing the clearance registers of: %s", bots)

    @staticmethod
    def parse_config(config: Mapping[str, Any]) -> GateConfig:
        try:
            return parse_gate_config(config, "modules[bot.gate.LiaisonGate].config")
        except GateConfigError as exc:
            raise ConfigError(str(exc)) from None

    # ------------------------------------------------------------ what the server knows

    async def _label(self, room_id: str) -> RoomLabel:
        """The label event of the room's current state, if the server has the room."""
        try:
            state = await self._api.get_room_state(room_id, [(LABEL_EVENT, "")])
        except Exception as exc:  # a room this server is not in: nothing to read
            log.debug("liaison gate: no state for %s: %s", room_id, exc)
            return UNLABELLED
        event = state.get((LABEL_EVENT, ""))
        return RoomLabel(True, event.sender) if event is not None else UNLABELLED

    @staticmethod
    def _label_in(state: Mapping[tuple[str, str], EventBase]) -> RoomLabel:
        event = state.get((LABEL_EVENT, ""))
        return RoomLabel(True, event.sender) if event is not None else UNLABELLED

    async def _enter(self, user_id: str, room_id: str, label: RoomLabel, what: str) -> Verdict:
        verdict: Verdict = await self._api.defer_to_threadpool(
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
            raise SynapseError(403, verdict.reason, Codes.FORBIDDEN, {REASON_FIELD: verdict.reason})
        return NOT_SPAM

    # ------------------------------------------------------------ every event

    async def check_event_allowed(
        self, event: EventBase, state: Mapping[tuple[str, str], EventBase]
    ) -> tuple[bool, dict[str, Any] | None]:
        """The backstop: membership and protected state, whoever made the event. Raises the
        403 itself, so the client reads the reason rather than "not allowed in this context"."""
        if not event.is_state():
            return True, None
        label = self._label_in(state)
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
        raise SynapseError(403, verdict.reason, Codes.FORBIDDEN, {REASON_FIELD: verdict.reason})

    @staticmethod
    def _already_joined(state: Mapping[tuple[str, str], EventBase], user_id: str) -> bool:
        current = state.get(("m.room.member", user_id))
        return current is not None and current.content.get("membership") == "join"


__all__ = ["LiaisonGate"]
