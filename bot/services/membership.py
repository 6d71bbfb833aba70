"""Who may be in which room: the clearance cache, the decisions on it, and enforcing them.

Why a cache: every send asks `may_read` for each member, so decisions come from memory;
the register is re-read at each sweep (the CLI changes it from another process) and for
one user before any decision that admits them (an invite, a join).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta

from bot.config import BotConfig
from bot.metrics import Metrics
from bot.services.ports import Audit, HomeserverError, RoomControl
from bot.services.register import ClearanceRegister, RegisterError
from bot.services.rooms import ManagedRoom, RoomDirectory
from bot.storage import ClearanceRecord, Store, in_thread
from bot.storage.register_reads import clearance_mismatches, policy_clearance
from commands.context import CommandError, Role
from commands.document import Document, Strong, doc, items, para
from commands.services import InviteOutcome, RevokeOutcome
from commands.views import fingerprint, normalise_fingerprint
from policy import Decision, may_enter
from policy.ids import RoomKey, UserId

log = logging.getLogger(__name__)

KICK_REASON = "not cleared for this room"  # not encrypted: no markings, no room names


class Membership:
    def __init__(
        self,
        settings: BotConfig,
        store: Store,
        register: ClearanceRegister,
        rooms: RoomDirectory,
        control: RoomControl,
        audit: Audit,
        metrics: Metrics,
        partner_of: Callable[[str], UserId | None],
        identity_confirmed: Callable[[UserId], None],
        check_identity: Callable[[UserId], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.register = register
        self.rooms = rooms
        self.control = control
        self.audit = audit
        self.metrics = metrics
        self.partner_of = partner_of  # room id -> the partner of the bot's DM there
        self.identity_confirmed = identity_confirmed
        self.check_identity = check_identity  # fetch and pin the user's master key now
        self.user_id = UserId("")  # the bot's own id, set once logged in
        self._clearances: dict[str, ClearanceRecord] = {}
        self._told: set[tuple[str, str]] = set()  # unusable records audited and alerted
        # Told of each member change in a managed room: the person's roles may have changed
        # (MEMBER is membership of any managed room), and with them what their DM offers.
        self.role_listeners: list[Callable[[UserId], None]] = []

    # ------------------------------------------------------------ the cache

    async def refresh(self) -> None:
        records = await in_thread(self.store.clearances)
        self._clearances = {r.user_id: r for r in records}

    async def refresh_one(self, user_id: UserId) -> None:
        record = await in_thread(self.store.clearance, user_id)
        if record is None:
            self._clearances.pop(user_id, None)
        else:
            self._clearances[user_id] = record

    async def refresh_room(self, room_id: str) -> None:
        """Re-read the records of a room's members before its key is shared: a grant or
        revocation made with the CLI (another process) counts from the next message, not
        from the next sweep."""
        members = [u for u in self.control.members(room_id) or {} if u != self.user_id]
        records = {r.user_id: r for r in await in_thread(self.store.clearances_of, members)}
        for user_id in members:
            record = records.get(user_id)
            if record is None:
                self._clearances.pop(user_id, None)
            else:
                self._clearances[user_id] = record

    def record_of(self, user_id: UserId) -> ClearanceRecord | None:
        return self._clearances.get(user_id)

    def remember(self, record: ClearanceRecord) -> None:
        self._clearances[record.user_id] = record

    def is_cleared(self, user_id: UserId) -> bool:
        """Has a record at all (the trust checks follow these users' identities)."""
        return user_id in self._clearances

    # ------------------------------------------------------------ decisions

    @staticmethod
    def today() -> date:
        return datetime.now(UTC).date()

    def may_join(self, user_id: UserId, room: ManagedRoom) -> Decision:
        """The rule the homeserver gate (bot.gate) applies too: `policy.may_enter`."""
        record = self._clearances.get(user_id)
        admin_room = room.key == self.settings.admin_room
        return may_enter(
            user_id,
            policy_clearance(record) if record is not None else None,
            room.policy,
            self.today(),
            admins=frozenset(self.settings.admins) if admin_room else None,
        )

    def may_read(self, room_id: str, user_id: UserId) -> Decision:
        """May this person read what the bot sends into the room: `may_join` in a managed
        room, being the partner in a DM; nobody in any other room."""
        managed = self.rooms.by_id.get(room_id)
        if managed is not None:
            return self.may_join(user_id, managed)
        partner = self.partner_of(room_id)
        if partner is not None:
            if partner == user_id:
                return Decision(
                    True, (f"{user_id} is the partner of this direct chat",), codes=("dm.partner",)
                )
            return Decision(
                False,
                (f"{user_id} is not the partner of this direct chat",),
                codes=("dm.not_partner",),
            )
        return Decision(
            False,
            ("not a room the bot manages or a direct chat it holds",),
            codes=("room.unmanaged",),
        )

    def key_recipients(self, room_id: str) -> list[UserId]:
        """Who may hold this room's key: members and invitees who may read it (the gateway
        shares it with those who have joined)."""
        members = self.control.members(room_id) or {}
        return [u for u in members if u != self.user_id and self.may_read(room_id, u)]

    def is_member(self, user_id: UserId, managed: ManagedRoom) -> bool:
        """Joined (not merely invited) to a managed room, as the last sync showed."""
        return bool((self.control.members(managed.room_id) or {}).get(user_id))

    def roles_of(self, user_id: UserId) -> frozenset[Role]:
        roles = {Role.ANYONE}
        if user_id in self.settings.admins:
            roles.add(Role.ADMIN)
        if user_id in self.settings.officers:
            roles.add(Role.OFFICER)
        if any(self.is_member(user_id, m) for m in self.rooms.by_key.values()):
            roles.add(Role.MEMBER)
        return frozenset(roles)

    # ------------------------------------------------------------ enforcing

    async def on_member_event(self, room_id: str, user_id: UserId, membership: str) -> None:
        """A join or an invite seen in a managed room: judge it on the register as it is
        now (the CLI may have changed it)."""
        managed = self.rooms.by_id.get(room_id)
        if managed is not None:
            for listener in self.role_listeners:
                listener(user_id)
        if managed is None or membership not in ("join", "invite"):
            return
        await self.refresh_one(user_id)
        await self.enforce(managed, user_id, f"{membership} event")

    async def enforce(self, room: ManagedRoom, user_id: UserId, why: str) -> bool:
        """Remove a member (or rescind an invite) who does not pass may_join. True if removed."""
        if user_id == self.user_id:
            return False
        decision = self.may_join(user_id, room)
        if decision.allowed:
            return False
        try:
            await self.control.kick(room.room_id, user_id, KICK_REASON)
        except HomeserverError as exc:
            log.warning("could not remove %s from %s: %s", user_id, room.key, exc)
            return False
        await self.audit(
            self.user_id,
            "member.removed",
            user_id,
            {
                "room": room.key,
                "why": why,
                "reason": decision.reason,
                "reason_code": decision.code,
            },
        )
        log.info("removed %s from %s (%s)", user_id, room.key, why)
        return True

    async def sweep(
        self, alert: Callable[[Document], Awaitable[None]] | None = None
    ) -> list[tuple[RoomKey, UserId]]:
        """Re-read the register (CLI changes) and remove everyone who no longer qualifies.
        Records with a grant the schemes in force read otherwise are audited and, with
        `alert`, told to the admins once each (they admit nobody until granted again)."""
        await self.refresh()
        await self._unusable(alert)
        removed: list[tuple[RoomKey, UserId]] = []
        for managed in list(self.rooms.by_key.values()):
            for user_id in list(self.control.members(managed.room_id) or {}):
                if await self.enforce(managed, user_id, "sweep"):
                    removed.append((managed.key, user_id))
        await in_thread(self.store.prune_handled, datetime.now(UTC) - timedelta(days=30))
        return removed

    async def _unusable(self, alert: Callable[[Document], Awaitable[None]] | None) -> None:
        found = {
            (user_id, why)
            for user_id, record in self._clearances.items()
            for why in clearance_mismatches(record)
        }
        new = sorted(found - self._told)
        self._told = found  # a grant made again, then changed again, is told again
        for user_id, why in new:
            log.error("clearance of %s not used: %s", user_id, why)
            await self.audit(self.user_id, "clearance.unusable", user_id, {"reason": why})
        if new and alert is not None:
            # A random transaction id: a sweep, not an event, finds these; what is told is
            # kept in memory, so a standby's first sweep tells them again, as a restart does.
            await alert(
                doc(
                    para(
                        "⚠ Clearances not used (their grants' ranks changed with the schemes "
                        "in force; grant them again to restore them):"
                    ),
                    items((Strong(user_id), ": ", why) for user_id, why in new),
                )
            )

    async def invite(self, actor: UserId, user_id: UserId, room_key: RoomKey) -> InviteOutcome:
        """Invite only whom the register admits now (re-read for this user first)."""
        managed = self.rooms.managed(room_key)
        await self.refresh_one(user_id)
        decision = self.may_join(user_id, managed)
        if not decision.allowed:
            await self.audit(
                actor,
                "invite.refused",
                user_id,
                {"room": room_key, "reason": decision.reason, "reason_code": decision.code},
            )
            self.metrics.invites.labels("refused").inc()
            return InviteOutcome(decision, False)
        try:
            await self.control.invite(managed.room_id, user_id)
        except HomeserverError as exc:
            await self.audit(
                actor, "invite.failed", user_id, {"room": room_key, "error": exc.errcode or "error"}
            )
            self.metrics.invites.labels("failed").inc()
            raise CommandError(f"the homeserver did not invite {user_id}: {exc.message}") from None
        await self.audit(
            actor,
            "invite",
            user_id,
            {"room": room_key, "reason": decision.reason, "reason_code": decision.code},
        )
        self.metrics.invites.labels("invited").inc()
        return InviteOutcome(decision, True)

    # ------------------------------------------------------------ the register

    async def grant(
        self,
        actor: UserId,
        user_id: UserId,
        level: str,
        *,
        nationality: str | None,
        expires: date | None,
        caveats: Sequence[str],
    ) -> ClearanceRecord:
        try:
            record = await in_thread(
                self.register.grant,
                actor,
                user_id,
                level,
                nationality=nationality,
                expires=expires,
                caveats=caveats,
            )
        except RegisterError as exc:
            raise CommandError(str(exc)) from None
        self.remember(record)
        # Pin their cross-signing identity now, not at their first message: a master key
        # swapped between the grant and that moment would otherwise be pinned as theirs.
        await self.check_identity(user_id)
        refreshed = await in_thread(self.store.clearance, record.user_id)
        if refreshed is not None:
            self.remember(refreshed)
            record = refreshed
        return record

    async def revoke(self, actor: UserId, user_id: UserId, scope: str | None) -> RevokeOutcome:
        """Revoke, then remove the user at once from every room they no longer qualify for."""
        try:
            record = await in_thread(self.register.revoke, actor, user_id, scope)
        except RegisterError as exc:
            raise CommandError(str(exc)) from None
        self.remember(record)
        removed = []
        for managed in self.rooms.by_key.values():
            if user_id in (self.control.members(managed.room_id) or {}) and await self.enforce(
                managed, user_id, f"revoked by {actor}"
            ):
                removed.append(managed.key)
        return RevokeOutcome(record, tuple(removed))

    async def confirm_identity(self, actor: UserId, user_id: UserId, key: str) -> ClearanceRecord:
        """Pin a changed cross-signing identity an admin has checked out of band."""
        record = await in_thread(self.store.clearance, user_id)
        if record is None:
            raise CommandError(f"{user_id} has no clearance record")
        wanted = normalise_fingerprint(key)
        if record.identity_pending is None:
            pinned = fingerprint(record.identity_key) if record.identity_key else "nothing yet"
            raise CommandError(f"{user_id} has no identity change waiting (pinned: {pinned})")
        if wanted != record.identity_pending:
            raise CommandError(
                f"that fingerprint is not {user_id}'s new master key; compare it again out of "
                "band (the alert shows the key seen)"
            )
        updated = await in_thread(
            self.store.pin_identity, user_id, wanted, actor, "identity.confirmed"
        )
        assert updated is not None
        self.remember(updated)
        self.identity_confirmed(user_id)
        return updated
