"""National release control: a second officer approves what leaves the nation.

A route may ask (`[[routes]] approval = "second-officer"`) that items at or above a level
of its source scheme wait for a second officer before any copy goes out. The relay engine
asks this desk, per target, whether a copy waits (`needs_approval`); those that do are held
here (`hold`: their would-be copies sealed, a notice in the source room naming the item's
id and what each target would receive). An approver who is not the sender, is cleared for
the item's label and speaks from a trusted device decides: by command (`!release approve`,
`!release deny`) or by a ✅ / ❌ reaction to the notice. Approval writes the ledger rows in
the same transaction that marks the targets approved, so a crash between the two still
sends each copy once (the engine re-sends pending rows at start). What nobody decides in
time expires (`expire_due`, run by the sweep); an edit of a held item holds it again, a
redaction withdraws it. Every refusal is audited as `release.refused` with its code.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.config import ReleasePolicy
from bot.metrics import Metrics
from bot.services.ports import Audit, EventHandle, HomeserverError, Messenger, SenderGate
from bot.services.relay import RelayEngine, Source, copy_for
from bot.services.render import target_banner
from bot.services.rooms import ManagedRoom, RoomDirectory
from bot.storage import (
    AuditNote,
    ClearanceRecord,
    HoldState,
    NewHeldTarget,
    NewHold,
    ReleaseRequest,
    Store,
    in_thread,
    parse_release_id,
)
from bot.storage.register_reads import policy_clearance
from bot.storage.sealing import (
    SealError,
    hold_binding,
    hold_sealer,
    reason_binding,
    reason_sealer,
)
from bot.wire import txn_id
from commands.document import Banner, Code, Document, Inline, Strong, doc, items, para
from policy import Decision, MarkingError, TaggedMessage, make_room, may_release, stored_label
from policy.decisions import may_enter
from policy.ids import UserId

log = logging.getLogger(__name__)

APPROVE_KEYS = frozenset({"✅"})
DENY_KEYS = frozenset({"❌"})
MAX_REASON = 500  # characters of a denial's reason kept (it is sealed, never audited)


@dataclass(frozen=True)
class Reaction:
    """An m.reaction (rel_type m.annotation) in a managed room, as the edge validated it."""

    room_id: str
    event_id: str
    sender: UserId
    relates_to: str  # the event reacted to: the bot's notice, for a decision
    key: str
    handle: EventHandle  # for the sender gate
    ciphertext: str | None  # the megolm message it came from (replay check); None in clear


@dataclass(frozen=True)
class Refusal:
    """Why someone may not decide an item, in words and as a stable code. `shown`: the
    words for the person when they quote what they typed (never audited: user text)."""

    reason: str
    code: str
    shown: str | None = None


def _age(delta: timedelta) -> str:
    """A short human duration: `45 s`, `12 min`, `3 h 05 min`, `2 d 4 h`."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _utc(at: datetime) -> datetime:
    """A stored time as UTC (SQLite gives it back without its zone)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _key(raw: str) -> str:
    """A reaction key without its emoji presentation selector (clients differ)."""
    return raw.replace("\ufe0f", "").strip()


class ReleaseDesk:
    """Holds, decides and expires release requests (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        rooms: RoomDirectory,
        relay: RelayEngine,
        messenger: Messenger,
        gate: SenderGate,
        audit: Audit,
        metrics: Metrics,
        policy_of: Callable[[str, str], ReleasePolicy | None],
        record_of: Callable[[UserId], ClearanceRecord | None],
        data_key: str,
        caveats: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.rooms = rooms
        self.relay = relay
        self.messenger = messenger
        self.gate = gate
        self.audit = audit
        self.metrics = metrics
        self._policy_of = policy_of
        # Per (source, target): the config's routes do not change while the bot runs, and
        # the relay asks for every copy of every tagged message.
        self._policies: dict[tuple[str, str], ReleasePolicy | None] = {}
        self.record_of = record_of
        self.caveats = tuple(caveats)
        self.copies = hold_sealer(data_key)
        self.reasons = reason_sealer(data_key)
        self._decide = asyncio.Lock()  # one decision at a time: a reply tells what it did

    # ------------------------------------------------------------ holding (the relay's hook)

    def policy_of(self, source_key: str, target_key: str) -> ReleasePolicy | None:
        """The release approval a route asks for (None: none)."""
        key = (source_key, target_key)
        if key not in self._policies:
            self._policies[key] = self._policy_of(source_key, target_key)
        return self._policies[key]

    def needs_approval(self, source_key: str, target_key: str, rank: int) -> bool:
        policy = self.policy_of(source_key, target_key)
        return policy is not None and policy.holds(rank)

    async def hold(
        self,
        source: Source,
        message: TaggedMessage,
        targets: Sequence[tuple[ManagedRoom, dict[str, Any]]],
    ) -> str:
        """Hold an item's copies for `targets` (each with the copy it would receive): stored
        sealed, audited `release.held`, announced in the source room. Once per item: a
        replay finds the stored request and sends the same notice again (its transaction id
        is the item's). The request's public id (`R12`)."""
        room = source.room
        now = datetime.now(UTC)
        timeout = min(
            (p.timeout for t, _ in targets if (p := self.policy_of(room.key, t.key)) is not None),
            default=timedelta(hours=4),
        )
        device = getattr(source.event, "sender_key", None)
        request = await in_thread(
            self.store.hold_release,
            NewHold(
                item_event_id=source.event_id,
                source_key=room.key,
                source_room_id=room.room_id,
                sender=source.sender,
                label=message.label.banner,
                scheme=message.label.scheme,
                rank=message.label.rank,
                held_at=now,
                expires_at=now + timeout,
                sender_device=device if isinstance(device, str) else None,
            ),
            [
                NewHeldTarget(
                    target.key, target.room_id, self._seal_copy(source.event_id, target, content)
                )
                for target, content in targets
            ],
            [
                AuditNote(
                    source.sender,
                    "release.held",
                    source.event_id,
                    {"room": room.key, "label": message.label.banner},
                )
            ],
        )
        self.metrics.relays.labels("held").inc()
        await self._count()
        await self._announce(
            request,
            txn_id("release-notice", request.item_event_id),
        )
        return request.public_id

    def _seal_copy(self, item_event_id: str, target: ManagedRoom, content: dict[str, Any]) -> str:
        return self.copies.seal_text(
            json.dumps(content), hold_binding(item_event_id, target.key, target.room_id)
        )

    async def _announce(self, request: ReleaseRequest, tx: str, *, edited: bool = False) -> None:
        """The notice approvers decide on (a reaction to it decides as a command does)."""
        try:
            event_id = await self.messenger.send_notice(
                request.source_room_id,
                self._notice_doc(request, edited),
                reply_to=request.item_event_id,
                tx_id=tx,
            )
        except HomeserverError as exc:
            # The hold stands (`!release pending` lists it); the notice is what a reaction
            # needs, and a replay of the item sends it again under the same id.
            log.warning("release notice for %s not sent: %s", request.public_id, exc)
            return
        if request.notice_event_id != event_id:
            await in_thread(self.store.set_release_notice, request.id, event_id)

    def _notice_doc(self, request: ReleaseRequest, edited: bool) -> Document:
        left = _utc(request.expires_at) - datetime.now(UTC)
        lines: list[tuple[Inline | str, ...]] = [
            (
                Strong(t.target_key),
                " would receive it as ",
                self._banner(request, self.rooms.by_key.get(t.target_key)),
            )
            for t in request.held_targets
        ]
        return doc(
            para(
                "⏸ Edited, held again for release approval: "
                if edited
                else "⏸ Held for release approval: ",
                Strong(request.public_id),
                " (",
                Banner(request.label, request.rank),
                f") from {request.sender}.",
            ),
            items(lines),
            para(
                "A second officer decides: react ✅ to release it or ❌ to deny it, or ",
                Code(f"!release approve {request.public_id} [TARGET …]"),
                " / ",
                Code(f'!release deny {request.public_id} "reason"'),
                f". Unless decided it expires in {_age(left)}.",
            ),
        )

    def _banner(self, request: ReleaseRequest, target: ManagedRoom | None) -> Banner:
        """What a target would receive: the item's label converted to the target's scheme."""
        if target is None:
            return Banner(request.label, request.rank)
        try:
            label = stored_label(request.label, self.caveats)
        except MarkingError:
            return Banner(request.label, request.rank)
        text, rank = target_banner(label, target.policy.scheme)
        return Banner(text, rank)

    # ------------------------------------------------------------ deciding

    async def approve(
        self,
        approver: UserId,
        public_id: str,
        targets: Sequence[str],
        room_id: str,
        event: EventHandle,
        *,
        direct: bool = False,
    ) -> Document:
        """Release a held item to `targets` (none named: every held one). Decided in the
        item's source room or the approver's direct chat with the bot (`direct`)."""
        async with self._decide:
            request, refusal = await self._decidable(
                approver, public_id, room_id, event, targets, direct
            )
            if request is None:
                assert refusal is not None
                return await self._refused(approver, public_id, None, refusal)
            if refusal is not None:
                return await self._refused(approver, public_id, request, refusal)
            chosen = list(targets) or [t.target_key for t in request.held_targets]
            entries = []
            not_now: list[tuple[str, str]] = []
            source = self.rooms.by_key.get(request.source_key)
            for key in chosen:
                held = request.target(key)
                target = self.rooms.by_key.get(key)
                if held is None or held.state is not HoldState.HELD or target is None:
                    continue
                why = self._not_releasable(request, source, target)
                if why is not None:
                    not_now.append((key, why))
                    continue
                try:
                    content = json.loads(
                        self.copies.open_text(
                            held.content,
                            hold_binding(request.item_event_id, key, held.target_room_id),
                        )
                    )
                except SealError:
                    # Moved from another item's or target's row (database write access):
                    # never sent; it stays held until it expires.
                    log.error("held copy of %s for %s does not open", request.public_id, key)
                    not_now.append((key, "its held copy does not open (the database changed?)"))
                    continue
                entries.append(self.relay.copy_entry(request.item_event_id, target, content))
            if not entries:
                lines = [("Not released to ", Strong(k), f": {why}.") for k, why in not_now]
                return doc(
                    para(f"Nothing released for {request.public_id}."),
                    *([items(lines)] if lines else []),
                )
            stored, rows = await in_thread(
                self.store.approve_release,
                request.id,
                entries,
                approver,
                [
                    AuditNote(
                        approver,
                        "release.approved",
                        request.item_event_id,
                        {"room": request.source_key, "request": request.id},
                    )
                ],
            )
            self._observe(stored)
            await self._count()
        sent = await self.relay.queue_sends(rows)
        lines = []
        for row, event_id in zip(rows, sent, strict=True):
            target = self.rooms.by_key.get(row.target_key)
            banner = self._banner(stored, target).text
            if event_id is not None:
                lines.append(("Relayed to ", Strong(row.target_key), f" as {banner}."))
            else:
                lines.append(
                    (
                        "Queued for ",
                        Strong(row.target_key),
                        ": the homeserver did not take it yet; the bot retries.",
                    )
                )
        lines += [("Not released to ", Strong(k), f": {why}.") for k, why in not_now]
        still = [t.target_key for t in stored.held_targets]
        tail = [para("Still held for ", ", ".join(still), ".")] if still else []
        return doc(para(f"✅ {stored.public_id} approved by {approver}."), items(lines), *tail)

    async def deny(
        self,
        approver: UserId,
        public_id: str,
        reason: str,
        room_id: str,
        event: EventHandle,
        cause: str,
        *,
        direct: bool = False,
    ) -> Document:
        """Deny every held target of an item; the sender is told why (their reply)."""
        reason = reason.strip()[:MAX_REASON]
        async with self._decide:
            request, refusal = await self._decidable(
                approver, public_id, room_id, event, (), direct
            )
            if request is None:
                assert refusal is not None
                return await self._refused(approver, public_id, None, refusal)
            if refusal is not None:
                return await self._refused(approver, public_id, request, refusal)
            keys = [t.target_key for t in request.held_targets]
            sealed = {
                key: self.reasons.seal_text(reason, reason_binding(request.item_event_id, key))
                for key in keys
            }
            stored = await in_thread(
                self.store.deny_release,
                request.id,
                keys,
                approver,
                sealed,
                [
                    AuditNote(
                        approver,
                        "release.denied",
                        request.item_event_id,
                        {
                            "room": request.source_key,
                            "request": request.id,
                            "reason_length": len(reason),
                        },
                    )
                ],
            )
            self._observe(stored)
            await self._count()
        why = [para("Reason given: ", reason)] if reason else [para("No reason was given.")]
        await self._tell_sender(
            stored,
            doc(
                para(
                    f"❌ Release of {stored.public_id} to {', '.join(keys)} was denied by ",
                    f"{approver}.",
                ),
                *why,
            ),
            txn_id("release-denied", stored.item_event_id, cause),
        )
        return doc(
            para(f"❌ {stored.public_id} denied for {', '.join(keys)}; the sender was told.")
        )

    async def pending(self, asker: UserId, room_id: str | None = None) -> Document:
        """What waits, oldest first, with its age: only items the asker is cleared for and,
        asked in a room (`room_id`), only those held from it (the list names labels and
        senders: not for another room's members)."""
        now = datetime.now(UTC)
        waiting = await in_thread(self.store.pending_releases)
        rows = []
        for request in waiting:
            if room_id is not None and request.source_room_id != room_id:
                continue
            if not self._cleared(asker, request).allowed:
                continue
            rows.append(
                (
                    Strong(request.public_id),
                    " ",
                    Banner(request.label, request.rank),
                    f" from {request.source_key} by {request.sender}, for ",
                    ", ".join(t.target_key for t in request.held_targets),
                    f" · waiting {_age(now - _utc(request.held_at))}"
                    f" · expires in {_age(_utc(request.expires_at) - now)}",
                )
            )
        if not rows:
            return doc("Nothing is held for release approval.")
        return doc(para(f"Held for release approval ({len(rows)}), oldest first:"), items(rows))

    async def _decidable(
        self,
        approver: UserId,
        public_id: str,
        room_id: str,
        event: EventHandle,
        targets: Sequence[str],
        direct: bool,
    ) -> tuple[ReleaseRequest | None, Refusal | None]:
        """The request and why `approver` may not decide it now (None: they may). The
        device and the clearance are judged first: until both pass, a refusal says nothing
        of the item (its label, room, targets or state)."""
        number = parse_release_id(public_id)
        request = (
            await in_thread(self.store.release_request, number) if number is not None else None
        )
        untrusted = await self.gate.untrusted_sender(room_id, event)
        if untrusted is not None:
            return request, Refusal(untrusted[0], "release.untrusted_device")
        if request is None:
            return None, Refusal(
                "no such release request", "release.unknown", f"no release request {public_id}"
            )
        if not self._cleared(approver, request).allowed:
            return request, Refusal("you are not cleared for this item", "release.not_cleared")
        if not direct and room_id != request.source_room_id:
            # The reply names the item's label and targets: not for another room's members.
            return request, Refusal(
                f"decide {request.public_id} in its source room ({request.source_key}) or in "
                "your direct chat with the bot",
                "release.wrong_room",
            )
        if not request.is_pending:
            return request, Refusal(f"{request.public_id} was already decided", "release.decided")
        if approver == request.sender:
            return request, Refusal(
                "the sender may not release their own item: a second officer decides",
                "release.own_item",
            )
        held = {t.target_key for t in request.held_targets}
        unknown = [t for t in targets if t not in held]
        if unknown:
            return request, Refusal(
                f"a target named is not held for {request.public_id}",
                "release.unknown_target",
                f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not held for "
                f"{request.public_id} (held: {', '.join(sorted(held))})",
            )
        for key in targets or sorted(held):
            policy = self.policy_of(request.source_key, key)
            if policy is None or approver not in policy.approvers:
                return request, Refusal(
                    f"{approver} is not an approver of releases from {request.source_key} to {key}",
                    "release.not_approver",
                )
        return request, None

    def _cleared(self, user_id: UserId, request: ReleaseRequest) -> Decision:
        """May this person read the item's label: the register's rule for entering a room
        of exactly that label (grant in its scheme, nationality in its releasable set,
        every caveat, valid)."""
        try:
            room = make_room(stored_label(request.label, self.caveats))
        except MarkingError as exc:
            return Decision(
                False, (f"its label does not read ({exc})",), codes=("label.unreadable",)
            )
        record = self.record_of(user_id)
        return may_enter(
            user_id,
            policy_clearance(record) if record is not None else None,
            room,
            datetime.now(UTC).date(),
        )

    def _not_releasable(
        self, request: ReleaseRequest, source: ManagedRoom | None, target: ManagedRoom
    ) -> str | None:
        """Why the rules would refuse the copy now (rooms re-labelled since it was held)."""
        if source is None:
            return "its source room is closed"
        try:
            label = stored_label(request.label, self.caveats)
        except MarkingError as exc:
            return f"its label does not read ({exc})"
        decision = may_release(label, source.policy, target.policy)
        return None if decision.allowed else decision.reason

    async def _refused(
        self,
        approver: UserId,
        public_id: str,
        request: ReleaseRequest | None,
        refusal: Refusal,
    ) -> Document:
        await self.audit(
            approver,
            "release.refused",
            request.item_event_id if request is not None else None,
            {
                **({"request": request.id} if request is not None else {}),
                "reason": refusal.reason,
                "reason_code": refusal.code,
            },
        )
        return doc(para(f"⚠ Not decided ({public_id}): ", refusal.shown or refusal.reason, "."))

    # ------------------------------------------------------------ reactions

    async def on_reaction(self, reaction: Reaction) -> None:
        """A reaction to a release notice: ✅ approves every held target, ❌ denies them
        (no reason). Handled once (marked handled; a replayed ciphertext is refused)."""
        if await in_thread(self.store.is_handled, reaction.event_id):
            return
        request = await in_thread(self.store.release_request_for_notice, reaction.relates_to)
        key = _key(reaction.key)
        if request is None or key not in APPROVE_KEYS | DENY_KEYS:
            return  # a reaction to anything else, or another emoji: not a decision
        if reaction.ciphertext is not None and not await in_thread(
            self.store.claim_ciphertext, reaction.ciphertext, reaction.event_id
        ):
            await self.audit(
                reaction.sender, "replay.refused", reaction.event_id, {"room_id": reaction.room_id}
            )
            await in_thread(self.store.mark_handled, reaction.event_id, reaction.room_id)
            return
        if key in APPROVE_KEYS:
            reply = await self.approve(
                reaction.sender, request.public_id, (), reaction.room_id, reaction.handle
            )
        else:
            reply = await self.deny(
                reaction.sender,
                request.public_id,
                "",
                reaction.room_id,
                reaction.handle,
                reaction.event_id,
            )
        await in_thread(self.store.mark_handled, reaction.event_id, reaction.room_id)
        await self.messenger.send_notice(
            reaction.room_id,
            reply,
            reply_to=request.notice_event_id,
            tx_id=txn_id("release-reaction", reaction.event_id),
        )

    async def malformed(self, room_id: str, event_id: str, sender: str, problem: str) -> None:
        """A reaction whose content does not fit its schema: audited once, never acted on."""
        if await in_thread(self.store.is_handled, event_id):
            return
        await self.audit(
            sender, "event.malformed", event_id, {"room_id": room_id, "problem": problem}
        )
        await in_thread(self.store.mark_handled, event_id, room_id)

    # ------------------------------------------------------------ time, edits, redactions

    async def expire_due(self, now: datetime | None = None) -> list[str]:
        """Expire what nobody decided in time; the sender is told. The ids expired."""
        now = now or datetime.now(UTC)
        expired = []
        for request in await in_thread(self.store.due_releases, now):
            stored = await in_thread(
                self.store.expire_release,
                request.id,
                now,
                [
                    AuditNote(
                        self.messenger.user_id,
                        "release.expired",
                        request.item_event_id,
                        {"room": request.source_key, "request": request.id},
                    )
                ],
            )
            if stored is None:
                continue
            expired.append(stored.public_id)
            self._observe(stored)
            keys = [t.target_key for t in stored.targets if t.state is HoldState.EXPIRED]
            await self._tell_sender(
                stored,
                doc(
                    para(
                        f"⌛ {stored.public_id} expired: no second officer released it to "
                        f"{', '.join(keys)} in time. Nothing was relayed there; send it again "
                        "if it still matters."
                    )
                ),
                txn_id(
                    "release-expired",
                    stored.item_event_id,
                    str(_utc(stored.expires_at).timestamp()),
                ),
            )
        if expired:
            await self._count()
        return expired

    async def on_edit(self, source: Source, message: TaggedMessage) -> str | None:
        """An edit of an item with a release request: its undecided targets (held, denied,
        expired) that the rules still allow are held again with the edited copy and the
        time starts again; a held one the edit may no longer go to is withdrawn. The words
        for the sender's reply, or None when the item had nothing held."""
        request = await in_thread(self.store.release_request_for_item, source.event_id)
        if request is None:
            return None
        room = source.room
        contents: dict[str, str] = {}
        for held in request.targets:
            if held.state not in (HoldState.HELD, HoldState.DENIED, HoldState.EXPIRED):
                continue
            target = self.rooms.by_key.get(held.target_key)
            if target is None or not may_release(message.label, room.policy, target.policy).allowed:
                continue
            contents[held.target_key] = self._seal_copy(
                source.event_id, target, copy_for(source, message, target)
            )
        policy_timeouts = [
            p.timeout for k in contents if (p := self.policy_of(room.key, k)) is not None
        ]
        now = datetime.now(UTC)
        stored = await in_thread(
            self.store.rehold_release,
            source.event_id,
            contents,
            now + min(policy_timeouts, default=timedelta(hours=4)),
            [
                AuditNote(
                    source.sender,
                    "release.reheld",
                    source.event_id,
                    {"room": room.key, "request": request.id, "label": message.label.banner},
                )
            ],
            label=message.label.banner,
            scheme=message.label.scheme,
            rank=message.label.rank,
        )
        if stored is None:
            return None
        await self._count()
        if stored.is_pending:
            edit = getattr(source.event, "event_id", None)
            cause = edit if isinstance(edit, str) else str(_utc(stored.expires_at).timestamp())
            await self._announce(
                stored, txn_id("release-reheld", stored.item_event_id, cause), edited=True
            )
            return f"Held again for release approval ({stored.public_id}): the edit resets it."
        return f"{stored.public_id} withdrawn: the edit no longer goes where it was held for."

    async def withdraw(self, item_event_id: str, cause: str) -> None:
        """The item was redacted (or lost its marking): nothing held for it goes out.
        `cause`: the event that withdrew it (the relay's ledger key; not audited)."""
        request = await in_thread(self.store.release_request_for_item, item_event_id)
        if request is None:
            return
        stored = await in_thread(
            self.store.withdraw_release,
            item_event_id,
            [
                AuditNote(
                    self.messenger.user_id,
                    "release.withdrawn",
                    item_event_id,
                    {"room": request.source_key, "request": request.id},
                )
            ],
        )
        if stored is not None:
            await self._count()

    # ------------------------------------------------------------ bookkeeping

    async def _tell_sender(self, request: ReleaseRequest, document: Document, tx: str) -> None:
        """A reply to the sender's message in the source room (encrypted, like the room)."""
        try:
            await self.messenger.send_notice(
                request.source_room_id, document, reply_to=request.item_event_id, tx_id=tx
            )
        except HomeserverError as exc:
            log.warning("could not tell the sender of %s: %s", request.public_id, exc)

    def _observe(self, request: ReleaseRequest) -> None:
        decided = [t.decided_at for t in request.targets if t.decided_at is not None]
        if decided:
            waited = _utc(max(decided, key=_utc)) - _utc(request.held_at)
            self.metrics.release_decision.observe(max(0.0, waited.total_seconds()))

    async def _count(self) -> None:
        self.metrics.release_pending.set(await in_thread(self.store.pending_release_count))

    async def start(self) -> None:
        """After a start: the gauge from the store, what expired while the bot was down, and
        the notice of a hold a crash or an outage left unannounced (under the id it was first
        tried with: the homeserver keeps one)."""
        await self._count()
        await self.expire_due()
        for request in await in_thread(self.store.pending_releases):
            if request.notice_event_id is None:
                await self._announce(request, txn_id("release-notice", request.item_event_id))


def parse_reason(text: str) -> str:
    """A deny reason as typed: surrounding straight or curly quotes dropped."""
    body = text.strip()
    pairs = {'"': '"', "“": "”", "„": "“", "'": "'", "«": "»"}
    if len(body) >= 2 and pairs.get(body[0]) == body[-1]:
        return body[1:-1].strip()
    return body


__all__ = ["Reaction", "ReleaseDesk", "parse_reason"]
