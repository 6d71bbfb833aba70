"""The relay engine: tagged intelligence between rooms along routes, exactly once.

A tagged message is parsed with its room's scheme, checked for spillage, stored (sealed),
and, when its sender is a liaison officer, released to each route target that
`may_release` allows. Each copy is a ledger row written *before* the send with a fixed
transaction id: a crash and replay re-send under the same id and the homeserver keeps one
copy. Edits and redactions of the source follow the copies.

Pipelined (`begin`): once a message's ledger rows are written its sends are queued and
the next message is parsed, checked and stored while they go out. Copies into one target
room still leave in the order their messages came (each waits for the one before it to that
room), and anything that reads the ledger's sent state (an edit, a redaction, the re-send
of pending rows) first waits for the queue to settle.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from bot.config import BotConfig
from bot.metrics import Metrics
from bot.services.ports import Audit, EventHandle, HomeserverError, Messenger, SenderGate
from bot.services.render import (
    edit_of,
    relay_copy,
    target_banner,
)
from bot.services.rooms import ManagedRoom, RoomDirectory
from bot.storage import (
    AuditNote,
    IntelItem,
    RelayEntry,
    RelayKind,
    RelayState,
    Store,
    in_thread,
)
from bot.storage.sealing import Sealer, SealError
from bot.wire import EVENT_LIMIT, encrypted_size, txn_id
from commands.document import Code, Document, Strong, doc, items, para
from policy import (
    Decision,
    MarkingError,
    TaggedMessage,
    fits,
    is_tagged,
    level_fits,
    levels_named,
    may_release,
    parse_tagged,
    record_mismatch,
    stored_label,
)
from policy.adatp4774 import import_label
from policy.ids import EventId, UserId

log = logging.getLogger(__name__)

SEAL_VERSION = b"v2"  # items and ledger rows in contexts of their own (v1: one shared)
TXN_MEMORY = timedelta(hours=23)  # Synapse forgets transaction ids after about 24 hours
REDACT_REASON = "withdrawn"  # redaction reasons are not encrypted: nothing more specific


def sealed_payload(text: str, topics: Sequence[str]) -> str:
    """What is sealed for an item: its text and its topics (nothing of it in clear)."""
    return json.dumps({"v": 2, "text": text, "topics": list(topics)}, ensure_ascii=False)


def opened_payload(sealed: str, clear_topics: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """(text, topics) from an opened item; a legacy item sealed its bare text."""
    try:
        payload = json.loads(sealed)
    except ValueError:
        return sealed, tuple(clear_topics)
    if not isinstance(payload, dict) or payload.get("v") != 2:
        return sealed, tuple(clear_topics)
    return str(payload.get("text", "")), tuple(str(t) for t in payload.get("topics", ()))


def item_binding(event_id: str, room_key: str, label: str) -> str:
    """What an item's sealed text is bound to: the fields that decide where it may go."""
    return f"item|{event_id}|{room_key}|{label}"


def ledger_binding(txn: str, target_key: str, target_room_id: str) -> str:
    """What a ledger row's sealed copy is bound to: where it is to be sent."""
    return f"relay|{txn}|{target_key}|{target_room_id}"


@dataclass(frozen=True)
class Source:
    """Where a tagged message came from."""

    room: ManagedRoom
    event_id: EventId  # the item's event: the original message, also for its edits
    sender: UserId | str  # a user, or "feed KEY"
    sent_at: datetime
    event: EventHandle  # the message's own event, for the sender gate (None for a feed)


def copy_for(source: Source, message: TaggedMessage, target: ManagedRoom) -> dict[str, Any]:
    """The relayed copy of `message` for `target`."""
    return relay_copy(
        label=message.label,
        precedence=message.precedence,
        exercise=message.exercise,
        text=message.text,
        target_scheme=target.policy.scheme,
        source_key=source.room.key,
        source_name=source.room.name,
        sender=source.sender,
        sent_at=source.sent_at,
        source_event_id=source.event_id,
    )


def _level(room: ManagedRoom, text: str) -> Decision:
    """Whether the level a text's marking names (all its readings, if it is ambiguous)
    fits the room, judged on the level segment alone: total, whatever else is wrong."""
    return level_fits(levels_named(text, room.policy.scheme), room.policy)


def _own_events(source: Source) -> list[str]:
    """The sender's own events that carry a message: the original and, when the message
    came as an edit of their own, the edit. Never another event: an edit may name any."""
    edit = getattr(source.event, "event_id", None)
    return list(dict.fromkeys([source.event_id, *([edit] if isinstance(edit, str) else [])]))


def _ready(document: Document) -> asyncio.Future[Document]:
    """A reply that needs nothing sent first."""
    done: asyncio.Future[Document] = asyncio.get_running_loop().create_future()
    done.set_result(document)
    return done


class ReleaseHolds(Protocol):
    """National release control (bot/services/release.py's desk): which copies wait for a
    second officer instead of going out, and what an edit or a withdrawal does to them."""

    def needs_approval(self, source_key: str, target_key: str, rank: int) -> bool: ...

    async def hold(
        self,
        source: Source,
        message: TaggedMessage,
        targets: Sequence[tuple[ManagedRoom, dict[str, Any]]],
    ) -> str:
        """Hold the copies (target, its content); the request's public id (`R12`)."""
        ...

    async def on_edit(self, source: Source, message: TaggedMessage) -> str | None: ...

    async def withdraw(self, item_event_id: str, cause: str) -> None: ...


class RelayEngine:
    def __init__(
        self,
        settings: BotConfig,
        store: Store,
        rooms: RoomDirectory,
        messenger: Messenger,
        gate: SenderGate,
        audit: Audit,
        metrics: Metrics,
        data_key: str,
    ) -> None:
        self.settings = settings
        self.store = store
        self.rooms = rooms
        self.messenger = messenger
        self.gate = gate
        self.audit = audit
        self.metrics = metrics
        # Items and ledger rows are sealed in contexts of their own: with one context, a
        # ledger row's sealed copy written into an item row (database write access) opened
        # as an item of any room.
        self.item_sealer = Sealer(data_key, "intel-item", SEAL_VERSION)
        self.ledger_sealer = Sealer(data_key, "intel-ledger", SEAL_VERSION)
        self._legacy_sealer = Sealer(data_key, "intel")  # only to reseal, once
        self._in_flight: set[str] = set()  # transaction ids queued or being sent right now
        self._queued: set[asyncio.Future[Any]] = set()  # releases whose sends are going out
        self._last_to: dict[str, asyncio.Future[Any]] = {}  # the latest send per target room
        self.holds: ReleaseHolds | None = None  # routes with release approval (the wiring's)

    # ------------------------------------------------------------ tagged messages

    async def handle(
        self,
        source: Source,
        body: str,
        *,
        only: Sequence[str] | None = None,
        label_field: Any = None,
    ) -> Document | None:
        """Handle a possibly tagged message; None when it is not tagged. Returns the reply
        to the sender (errors, refusals, the receipt) once its copies went out.
        `label_field` is the message's own machine-readable label
        (`io.github.liaison_bot.label`, ADatP-4774), if it has one: it tags the message as a
        bracket marking does."""
        pending = await self.begin(source, body, only=only, label_field=label_field)
        return None if pending is None else await pending

    async def begin(
        self,
        source: Source,
        body: str,
        *,
        only: Sequence[str] | None = None,
        label_field: Any = None,
    ) -> Awaitable[Document] | None:
        """`handle` up to the point where its copies are in the ledger and queued: returns
        the receipt-to-be, which completes when they went out (or were queued for a retry).
        The caller may go on to the next message meanwhile."""
        if label_field is None and not is_tagged(body):
            return None
        reply = await self._begin(source, body, only, label_field)
        return _ready(reply) if isinstance(reply, Document) else reply

    async def _begin(
        self, source: Source, body: str, only: Sequence[str] | None, label_field: Any
    ) -> Document | asyncio.Future[Document]:
        """The reply at once (an error, a refusal), or the receipt-to-be of a release."""
        room = source.room
        removed = doc(
            para(
                "⚠ Your message was removed from this room: its marking does not "
                "fit the room. The security administrators were alerted; nothing "
                "was relayed."
            )
        )
        try:
            message = self._parse(room, body, label_field)
        except MarkingError as exc:
            # Spillage is judged on the level as soon as the level can be read, whatever
            # else is wrong with the marking: the text must not stay in a lower room.
            level = _level(room, body)
            if not level.allowed:
                await self._spillage(source, "unreadable marking", level, _own_events(source))
                return removed
            # The error quotes the message; the audit log is permanent and in clear, so it
            # keeps where the marking broke, never the words.
            await self._audit(
                source.sender,
                "relay.malformed",
                room,
                source,
                {"position": exc.position, "length": len(body)},
            )
            return doc(para("⚠ Not stored or relayed: ", str(exc), "."))
        assert message is not None
        own = fits(message.label, room.policy)
        if not own.allowed:  # before the device gate: spillage is removed whoever sent it
            await self._spillage(source, message.label.banner, own, _own_events(source))
            return removed
        refusal = await self.gate.untrusted_sender(room.room_id, source.event)
        if refusal is not None:
            await self._audit(
                source.sender, "relay.untrusted-device", room, source, {"problem": refusal[0]}
            )
            return doc(
                para(
                    "⚠ Not stored or relayed: ",
                    refusal[0],
                    ". Only devices their owner has verified may post intelligence.",
                )
            )
        too_big = self._oversized(source, message)
        if too_big is not None:
            await self._audit(source.sender, "relay.too-long", room, source, {"bytes": too_big})
            return doc(
                para(
                    f"⚠ Not stored or relayed: too long once relayed and encrypted "
                    f"(about {too_big} bytes; an event may have at most {EVENT_LIMIT}). "
                    "Shorten the text or split it into several messages."
                )
            )
        await self._store(source, message)
        if source.sender not in self.settings.officers:
            await self._audit(
                source.sender, "relay.not-officer", room, source, {"label": message.label.banner}
            )
            return doc(
                para(
                    "Stored for the digest, not relayed: only liaison officers "
                    "release intelligence to other rooms."
                )
            )
        targets = self.route_targets(room.key)
        if only is not None:
            outside = [t for t in only if t not in targets]
            if outside:
                return doc(
                    para(
                        "⚠ Not relayed: ",
                        ", ".join(outside),
                        f" {'is' if len(outside) == 1 else 'are'} not a route target of "
                        f"{room.key} (targets: {', '.join(targets) or 'none'}). The "
                        "message is stored.",
                    )
                )
            targets = list(only)
        return await self._queue_release(source, message, targets)

    def _parse(self, room: ManagedRoom, body: str, label_field: Any) -> TaggedMessage | None:
        """A message's marking read with its room's scheme, and its label field (the
        ADatP-4774 label it carries), if any; MarkingError naming what is wrong."""
        carried = (
            import_label(label_field, extra_caveats=self.settings.caveats)
            if label_field is not None
            else None
        )
        return parse_tagged(
            body, room.policy.scheme, extra_caveats=self.settings.caveats, label=carried
        )

    def _oversized(self, source: Source, message: TaggedMessage) -> int | None:
        """The estimated size of the largest copy this message would make, when over the
        homeserver's event limit: the copy carries the text twice (body and HTML, escaped)
        and encryption adds a third (base64) plus its envelope. None when all fit."""
        targets = [self.rooms.by_key[k] for k in self.route_targets(source.room.key)]
        largest = max(
            encrypted_size(copy_for(source, message, target)) for target in [source.room, *targets]
        )
        return largest if largest > EVENT_LIMIT else None

    def route_targets(self, room_key: str) -> list[str]:
        return self.rooms.targets_of(room_key)

    async def store_item(self, source: Source, message: TaggedMessage, origin: str) -> IntelItem:
        """Store an item that did not come through chat (a feed), audited the same way."""
        return await self._store(source, message, origin)

    async def release(self, source: Source, message: TaggedMessage) -> Document:
        """Release a stored item along its room's routes, as for an officer's message."""
        return await self._release(source, message, self.route_targets(source.room.key))

    async def _store(
        self, source: Source, message: TaggedMessage, origin: str = "chat"
    ) -> IntelItem:
        item = IntelItem(
            event_id=source.event_id,
            room_key=source.room.key,
            room_id=source.room.room_id,
            sender=source.sender,
            label=message.label.banner,
            scheme=message.label.scheme,
            rank=message.label.rank,
            precedence=message.precedence,
            exercise=message.exercise,
            topics=(),  # sealed with the text: topics say what the text is about
            text=self.item_sealer.seal_text(
                sealed_payload(message.text, message.topics),
                item_binding(source.event_id, source.room.key, message.label.banner),
            ),
            created_at=source.sent_at,
            origin=origin,
        )
        stored, created = await in_thread(self.store.save_item, item)
        if created:
            await self._audit(
                source.sender,
                "intel.stored",
                source.room,
                source,
                {"label": message.label.banner, "precedence": message.precedence.name},
            )
        return stored

    async def _release(
        self, source: Source, message: TaggedMessage, targets: Sequence[str]
    ) -> Document:
        return await (await self._queue_release(source, message, targets))

    async def _queue_release(
        self, source: Source, message: TaggedMessage, targets: Sequence[str]
    ) -> asyncio.Future[Document]:
        """Write the ledger rows, queue their sends; the receipt, once they are done."""
        room = source.room
        entries: list[RelayEntry] = []
        notes: list[AuditNote] = []
        refused: list[tuple[str, str]] = []
        held: list[tuple[ManagedRoom, dict[str, Any]]] = []
        for key in targets:
            target = self.rooms.by_key[key]
            decision = may_release(message.label, room.policy, target.policy)
            if not decision.allowed:
                refused.append((key, decision.reason))
                self.metrics.relays.labels("refused").inc()
                notes.append(
                    AuditNote(
                        source.sender,
                        "relay.refused",
                        source.event_id,
                        {
                            "from": room.key,
                            "to": key,
                            "label": message.label.banner,
                            "reason": decision.reason,
                            "reason_code": decision.code,
                        },
                    )
                )
                continue
            content = copy_for(source, message, target)
            if self.holds is not None and self.holds.needs_approval(
                room.key, key, message.label.rank
            ):
                held.append((target, content))
                continue
            entries.append(
                self._entry(RelayKind.COPY, source.event_id, source.event_id, target, content)
            )
        rows = await in_thread(self.store.add_relays, entries, notes)
        # Copies to several rooms go out at once; into one room, after the one before.
        sends = [self._queue_send(row) for row in rows]
        if held and self.holds is not None:
            public_id = await self.holds.hold(source, message, held)
            refused += [(t.key, f"held for release approval ({public_id})") for t, _ in held]
        receipt = asyncio.ensure_future(self._receipt_after(source, message, rows, sends, refused))
        self._queued.add(receipt)
        receipt.add_done_callback(self._queued.discard)
        return receipt

    def _queue_send(self, row: RelayEntry) -> asyncio.Future[str | None]:
        """The row's send, after the one queued before it into the same room. The engine owns
        the task: a cancelled receipt does not cancel it (the next copy would overtake)."""
        before = self._last_to.get(row.target_key)
        task = asyncio.ensure_future(self._send_after(row, before))
        self._last_to[row.target_key] = task
        self._in_flight.add(row.txn_id)  # from now on: resend_pending leaves it alone

        def forget(
            done: asyncio.Future[str | None], key: str = row.target_key, txn: str = row.txn_id
        ) -> None:
            self._in_flight.discard(txn)
            if self._last_to.get(key) is done:
                del self._last_to[key]

        task.add_done_callback(forget)
        return task

    def copy_entry(
        self, item_event_id: str, target: ManagedRoom, content: dict[str, Any]
    ) -> RelayEntry:
        """The ledger row of an item's copy for `target`, under the transaction id the copy
        has whichever way it goes out (at once, or once a second officer released it)."""
        return self._entry(RelayKind.COPY, item_event_id, item_event_id, target, content)

    async def queue_sends(self, rows: Sequence[RelayEntry]) -> list[str | None]:
        """Send ledger rows written elsewhere (a release approval), in the per-room order
        of the live path; each one's event id, or None when it waits for a retry. `settle`
        waits for them too."""
        sends = [self._queue_send(row) for row in rows]
        done = asyncio.ensure_future(asyncio.gather(*(asyncio.shield(s) for s in sends)))
        self._queued.add(done)
        done.add_done_callback(self._queued.discard)
        results: list[str | None] = await done
        self.metrics.relays.labels("sent").inc(sum(1 for r in results if r is not None))
        return results

    async def _send_after(
        self, row: RelayEntry, before: asyncio.Future[str | None] | None
    ) -> str | None:
        if before is not None:
            await asyncio.wait([before])  # its outcome is its own receipt's business
        return await self._send(row)

    async def settle(self) -> None:
        """Wait until every queued release has gone out (or was queued for a retry)."""
        while self._queued:
            await asyncio.wait(list(self._queued))

    async def _receipt_after(
        self,
        source: Source,
        message: TaggedMessage,
        rows: Sequence[RelayEntry],
        sends: Sequence[asyncio.Future[str | None]],
        refused: list[tuple[str, str]],
    ) -> Document:
        sent: list[tuple[str, str]] = []
        failed: list[str] = []
        results = await asyncio.gather(*(asyncio.shield(s) for s in sends))
        for row, event_id in zip(rows, results, strict=True):
            target = self.rooms.by_key.get(row.target_key)  # closed meanwhile: its own key
            if event_id is not None:
                scheme = target.policy.scheme if target is not None else message.label.scheme
                sent.append((row.target_key, target_banner(message.label, scheme)[0]))
                self.metrics.relays.labels("sent").inc()
                latency = (datetime.now(UTC) - source.sent_at).total_seconds()
                self.metrics.relay_latency.observe(max(0.0, latency))
            else:
                failed.append(row.target_key)
        return self._receipt(sent, refused, failed)

    def _entry(
        self,
        kind: RelayKind,
        event_id: str,
        item_event_id: str,
        target: ManagedRoom,
        content: dict[str, Any],
    ) -> RelayEntry:
        txn = txn_id(kind, event_id, target.key)
        return RelayEntry(
            txn_id=txn,
            kind=kind,
            source_event_id=event_id,
            item_event_id=item_event_id,
            target_key=target.key,
            target_room_id=target.room_id,
            content=self.ledger_sealer.seal_text(
                json.dumps(content), ledger_binding(txn, target.key, target.room_id)
            ),
        )

    async def _send(self, row: RelayEntry) -> str | None:
        """Send one ledger row under its transaction id; the event id, or None to retry."""
        if row.state == RelayState.SENT:
            return row.target_event_id
        self._in_flight.add(row.txn_id)
        try:
            return await self._send_once(row)
        finally:
            self._in_flight.discard(row.txn_id)

    async def _send_once(self, row: RelayEntry) -> str | None:
        try:
            content = json.loads(
                self.ledger_sealer.open_text(
                    row.content, ledger_binding(row.txn_id, row.target_key, row.target_room_id)
                )
            )
        except SealError:
            # Its target was changed in the database (or the row predates the binding):
            # never sent anywhere; the admins hear of it.
            log.error("ledger row %s does not open for its target: not sent", row.txn_id)
            await in_thread(self.store.relay_state, row.txn_id, RelayState.STALE)
            await self.messenger.alert_admins(
                doc(
                    para(
                        "⚠ A relay to ",
                        Strong(row.target_key),
                        " was not sent: its sealed copy does not match its target (the "
                        "database was changed?). Check the audit log.",
                    )
                ),
                txn_id("alert-ledger", row.txn_id),
            )
            return None
        try:
            if row.kind == RelayKind.REDACT:
                await self.messenger.redact(
                    row.target_room_id, content["redacts"], REDACT_REASON, tx_id=row.txn_id
                )
                event_id = content["redacts"]
            else:
                event_id = await self.messenger.send(row.target_room_id, content, tx_id=row.txn_id)
        except HomeserverError as exc:
            log.warning(
                "relay %s to %s not sent yet (%s); will retry", row.txn_id, row.target_key, exc
            )
            return None
        action = {
            RelayKind.COPY: "relay.sent",
            RelayKind.EDIT: "relay.edited",
            RelayKind.REDACT: "relay.redacted",
        }
        await in_thread(
            self.store.relay_sent,
            row.txn_id,
            event_id,
            AuditNote(
                self.messenger.user_id,
                action[row.kind],
                row.item_event_id,
                {"to": row.target_key, "txn_id": row.txn_id},
            ),
        )
        return str(event_id)

    def _receipt(
        self, sent: list[tuple[str, str]], refused: list[tuple[str, str]], failed: list[str]
    ) -> Document:
        rows = [("Relayed to ", Strong(key), f" as {banner}.") for key, banner in sent]
        rows += [("Not relayed to ", Strong(key), f": {reason}.") for key, reason in refused]
        rows += [
            ("Queued for ", Strong(key), ": the homeserver did not take it yet; the bot retries.")
            for key in failed
        ]
        if not rows:
            return doc("Stored. This room has no relay routes.")
        return doc(items(rows))

    # ------------------------------------------------------------ spillage

    @staticmethod
    def names_level_above(room: ManagedRoom, body: str) -> bool:
        """Whether a text's marking names a level the room may not hold (an edit's
        fallback `* …` read as its marking)."""
        return not _level(room, body.removeprefix("* ")).allowed

    async def remove_if_spilled(self, source: Source, bodies: Sequence[str | None]) -> bool:
        """A message that is not acted on (its content is malformed): if any of its texts
        names a level above the room, it is spillage all the same, and removed (its own
        event only, `source.event_id`). True if it was."""
        room = source.room
        for body in bodies:
            if body is None:
                continue
            level = _level(room, body.removeprefix("* "))  # an edit's fallback body too
            if not level.allowed:
                await self._spillage(source, "unreadable marking", level, [source.event_id])
                return True
        return False

    async def _foreign_edit(
        self, source: Source, new_body: str, label_field: Any
    ) -> Document | None:
        """An edit of someone else's event (or of one the homeserver does not show): never
        applied, never tagging anything. Only the edit itself is judged: if its text is
        marked above the room it is spillage, and the edit alone is redacted, never the
        event it names."""
        own_event = Source(
            source.room, EventId(source.event.event_id), source.sender, source.sent_at,
            source.event,
        )  # fmt: skip
        room = source.room
        try:
            message = self._parse(room, new_body, label_field)
        except MarkingError:
            message = None
        if message is not None:
            marking, decision = message.label.banner, fits(message.label, room.policy)
        else:
            marking, decision = "unreadable marking", _level(room, new_body)
        if not decision.allowed:
            await self._spillage(own_event, marking, decision, [own_event.event_id])
            return doc(
                para(
                    "⚠ Your edit was removed from this room: its marking does not fit the "
                    "room. The administrators were alerted."
                )
            )
        await self.audit(
            source.sender,
            "intel.edit-ignored",
            source.event_id,
            {"room": room.key, "edit": own_event.event_id, "reason": "not the sender's event"},
        )
        return None

    async def _spillage(
        self,
        source: Source,
        marking: str,
        decision: Decision,
        event_ids: Sequence[str],
        withdrawn: Sequence[str] = (),
    ) -> None:
        """Breach response: remove the event(s) now, alert admins (never the text), record.
        `decision`: the refusal that found it (its reasons name levels and audiences, so
        the audit row carries its code too, the one form a SIEM export may take out).
        `withdrawn`: rooms whose relayed copies were withdrawn with it."""
        room = source.room
        reason = decision.reason
        unredacted: list[str] = []
        for event_id in event_ids:
            try:
                await self.messenger.redact(
                    room.room_id,
                    event_id,
                    "spillage",
                    tx_id=txn_id("spillage-redact", room.room_id, event_id),
                )
            except HomeserverError as exc:
                log.error("could not redact spilled %s in %s: %s", event_id, room.key, exc)
                unredacted.append(event_id)
        await self._audit(
            source.sender,
            "spillage",
            room,
            source,
            {
                "marking": marking,
                "reason": reason,
                "reason_code": decision.code,
                "redacted": [e for e in event_ids if e not in unredacted],
                **({"not_redacted": unredacted} if unredacted else {}),
                **({"withdrawn_from": list(withdrawn)} if withdrawn else {}),
            },
        )
        await self.messenger.alert_admins(
            doc(
                para("⚠ Spillage in ", Strong(room.key), f" ({room.name}, {room.banner}): "),
                items(
                    [
                        ("sender: ", source.sender),
                        ("event: ", Code(source.event_id)),
                        ("marking: ", marking),
                        ("why: ", reason),
                    ]
                ),
                para(
                    "The event was redacted from the room and nothing was relayed."
                    if not withdrawn
                    else "The event was redacted from the room and its relayed copies "
                    f"withdrawn from {', '.join(withdrawn)}."
                )
                if not unredacted
                else para(
                    "⚠ The homeserver refused to redact ",
                    *(Code(e) for e in unredacted),
                    ": the text is still in the room. Redact it by hand.",
                ),
            ),
            txn_id("alert-spillage", room.room_id, source.event_id, *event_ids),
        )

    # ------------------------------------------------------------ edits and redactions

    async def handle_edit(
        self, source: Source, new_body: str, *, label_field: Any = None
    ) -> Document | None:
        """An edit of a message in a managed room (source.event_id is the original's);
        `label_field` is the new content's machine-readable label, if any."""
        await self.settle()  # the copies it edits must have gone out
        item = await in_thread(self.store.item, source.event_id)
        if item is None:
            # An edit that tags an untagged message: only the sender's own. The target is
            # whatever event id the edit names (anyone's message, the bot's copies, room
            # state): acted on as the edit's "original", a spillage removal would redact it.
            owner = await self.messenger.sender_of(source.room.room_id, source.event_id)
            if owner != source.sender:
                return await self._foreign_edit(source, new_body, label_field)
            return await self.handle(source, new_body, label_field=label_field)
        if item.sender != source.sender or item.room_key != source.room.key:
            # Clients ignore edits by someone else, or from another room; so do we.
            return await self._foreign_edit(source, new_body, label_field)
        room = source.room
        # Every edit of an item passes the gate, whatever it says: one that drops the
        # marking would otherwise withdraw every copy for anyone holding the sender's token.
        refusal = await self.gate.untrusted_sender(room.room_id, source.event)
        if refusal is not None:
            await self._audit(
                source.sender, "relay.untrusted-device", room, source, {"problem": refusal[0]}
            )
            return doc(para("⚠ Edit not applied: ", refusal[0], ". Nothing was changed."))
        if label_field is None and not is_tagged(new_body):
            return await self._withdraw(source, item, "the edit removed the marking")
        try:
            message = self._parse(room, new_body, label_field)
        except MarkingError as exc:
            level = _level(room, new_body)
            if level.allowed:
                return doc(para("⚠ Edit not applied to the relayed copies: ", str(exc), "."))
            message, marking, decision = None, "unreadable marking", level
        else:
            assert message is not None
            marking, decision = message.label.banner, fits(message.label, room.policy)
        if message is None or not decision.allowed:
            # Re-marked above the room: the text now says it was never releasable where it
            # went, so the copies are withdrawn too and the item leaves search and digests.
            gone = await self._redact_copies(source.event.event_id, source.event_id)
            await self._spillage(source, marking, decision, _own_events(source), gone)
            return doc(
                para(
                    "⚠ Your edited message was removed from this room: its marking "
                    "does not fit the room. Its relayed copies were withdrawn and the "
                    "administrators were alerted."
                )
            )
        await in_thread(
            self.store.update_item,
            source.event_id,
            label=message.label.banner,
            scheme=message.label.scheme,
            rank=message.label.rank,
            precedence=message.precedence,
            exercise=message.exercise,
            topics=(),
            text=self.item_sealer.seal_text(
                sealed_payload(message.text, message.topics),
                item_binding(source.event_id, room.key, message.label.banner),
            ),
        )
        copies = [
            c
            for c in await in_thread(self.store.copies_of, source.event_id)
            if c.state == RelayState.SENT and c.target_event_id
        ]
        entries: list[RelayEntry] = []
        withdrawn: list[tuple[str, str]] = []
        kept: list[str] = []
        for copy in copies:
            target = self.rooms.by_key.get(copy.target_key)
            if target is None:
                continue
            decision = may_release(message.label, room.policy, target.policy)
            if (
                decision.allowed
                and self.holds is not None
                and self.holds.needs_approval(room.key, target.key, message.label.rank)
            ):
                # Its new text was never released by a second officer: the copy keeps
                # the text that went out (released at once, or approved).
                kept.append(target.key)
                continue
            if decision.allowed:
                content = copy_for(source, message, target)
                entries.append(
                    self._entry(
                        RelayKind.EDIT,
                        source.event.event_id,
                        source.event_id,
                        target,
                        edit_of(str(copy.target_event_id), content),
                    )
                )
            else:
                withdrawn.append((copy.target_key, decision.reason))
                entries.append(
                    self._entry(
                        RelayKind.REDACT,
                        source.event.event_id,
                        source.event_id,
                        target,
                        {"redacts": copy.target_event_id},
                    )
                )
        rows = await in_thread(self.store.add_relays, entries)
        for row in rows:
            await self._send(row)
        lines: list[tuple[str | Strong, ...]] = [
            ("Edit relayed to ", Strong(r.target_key), ".")
            for r in rows
            if r.kind == RelayKind.EDIT
        ]
        lines += [
            ("Copy in ", Strong(key), f" withdrawn: the edit is not releasable there ({reason}).")
            for key, reason in withdrawn
        ]
        lines += [
            ("Edit not relayed to ", Strong(key), ": it would need release approval again; "
             "the copy there keeps the text that was released.")
            for key in kept
        ]  # fmt: skip
        if self.holds is not None:
            again = await self.holds.on_edit(source, message)
            if again is not None:
                lines.append((again,))
        return doc(items(lines)) if lines else None

    async def _withdraw(self, source: Source, item: IntelItem, why: str) -> Document:
        keys = await self._redact_copies(source.event.event_id, item.event_id)
        return doc(para(f"Relayed copies withdrawn from {', '.join(keys) or 'no rooms'}: {why}."))

    async def handle_redaction(self, room: ManagedRoom, redacts: str, sender: str) -> None:
        """The source was redacted by its sender or an admin: its copies are withdrawn and
        it leaves digests and search. Its sealed text is kept: a redaction is not encrypted
        and names no device, so anyone holding the sender's access token can send one; it
        may withdraw (the safe direction), never destroy the record."""
        await self.settle()  # the copies it withdraws must have gone out
        item = await in_thread(self.store.item, redacts)
        if item is None or item.redacted_at is not None:
            return
        if sender != item.sender and sender not in self.settings.admins:
            await self.audit(
                sender,
                "intel.redaction-ignored",
                redacts,
                {"room": room.key, "reason": "neither the item's sender nor an admin"},
            )
            return
        keys = await self._redact_copies(f"redaction:{redacts}", redacts, forget=False)
        await self.audit(sender, "intel.redacted", redacts, {"room": room.key, "copies": keys})

    async def _redact_copies(
        self, cause_event_id: str, item_event_id: str, *, forget: bool = True
    ) -> list[str]:
        """Redact every sent copy of an item (ledger rows keyed by the causing event) and
        retire the item, forgetting its text unless told not to; the copies' room keys.
        Copies held for release approval are withdrawn with them."""
        if self.holds is not None:
            await self.holds.withdraw(item_event_id, cause_event_id)
        copies = [
            c
            for c in await in_thread(self.store.copies_of, item_event_id)
            if c.state == RelayState.SENT and c.target_event_id
        ]
        entries = [
            self._entry(
                RelayKind.REDACT,
                cause_event_id,
                item_event_id,
                target,
                {"redacts": copy.target_event_id},
            )
            for copy in copies
            if (target := self.rooms.by_key.get(copy.target_key)) is not None
        ]
        for row in await in_thread(self.store.add_relays, entries):
            await self._send(row)
        for row in await in_thread(self.store.ledger_of, item_event_id):
            # A copy or an edit an outage left pending must never go out now.
            if row.state == RelayState.PENDING and row.kind != RelayKind.REDACT:
                await self._withhold(row, "its item was withdrawn", "item.withdrawn")
        item = await in_thread(self.store.item, item_event_id) if forget else None
        sealed_empty = (
            self.item_sealer.seal_text(
                sealed_payload("", ()), item_binding(item.event_id, item.room_key, item.label)
            )
            if item is not None
            else None
        )
        await in_thread(self.store.redact_item, item_event_id, sealed_empty)
        if forget:  # the ledger's sealed copies held the text too
            ledger = await in_thread(self.store.ledger_of, item_event_id)
            blanks = {
                row.txn_id: self.ledger_sealer.seal_text(
                    "{}", ledger_binding(row.txn_id, row.target_key, row.target_room_id)
                )
                for row in ledger
            }
            await in_thread(self.store.blank_ledger, blanks)
        return [c.target_key for c in copies]

    # ------------------------------------------------------------ the ledger's tail

    async def start(self) -> None:
        """After the first sync: old sealed values resealed (before anything opens one),
        then what a crash or an outage left pending re-sent."""
        await self.reseal_legacy()
        await self.resend_pending()

    async def resend_pending(self) -> None:
        """Re-send rows a crash or an outage left pending; report those too old to re-send.
        Rows the live path has queued are its own: sent here they could overtake the copy
        queued before them into the same room."""
        now = datetime.now(UTC)
        for row in await in_thread(self.store.pending_relays):
            if row.txn_id in self._in_flight:
                continue  # the live path has it
            if row.created_at is not None and now - row.created_at > TXN_MEMORY:
                await self._retire(row, "relay.stale")
                await self.messenger.alert_admins(
                    doc(
                        para(
                            "⚠ A relay to ",
                            Strong(row.target_key),
                            " of ",
                            Code(row.item_event_id),
                            " stayed unsent for over 23 hours. It was not re-sent, since "
                            "the homeserver no longer recognises its transaction id; check "
                            "the target room and send it again if it is missing.",
                        )
                    ),
                    txn_id("alert-stale", row.txn_id),
                )
                continue
            withheld = await self._withheld(row)
            if withheld is not None:
                await self._withhold(row, *withheld)
                continue
            await self._send(row)

    async def _withheld(self, row: RelayEntry) -> tuple[str, str] | None:
        """Why a pending copy or edit must not go out any more, and the reason's code, or
        None: its item was withdrawn or re-marked since the row was queued. Without this, a
        copy an outage left pending carried its text, at the next sweep, to a room it may
        no longer reach."""
        if row.kind == RelayKind.REDACT:
            return None
        item = await in_thread(self.store.item, row.item_event_id)
        if item is None or item.redacted_at is not None:
            return "its item was withdrawn", "item.withdrawn"
        source = self.rooms.by_key.get(item.room_key)
        target = self.rooms.by_key.get(row.target_key)
        if source is None or target is None:
            return None  # a closed room: the send itself reports it
        try:
            label = stored_label(item.label, tuple(self.settings.caveats))
        except MarkingError:
            return "its stored label does not read", "label.unreadable"
        changed = record_mismatch(label, item.label, item.scheme, item.rank)
        if changed is not None:
            return f"its stored label is {changed}", "label.rank_changed"
        decision = may_release(label, source.policy, target.policy)
        if decision.allowed:
            return None
        return f"no longer releasable there: {decision.reason}", decision.code

    async def _withhold(self, row: RelayEntry, why: str, code: str) -> None:
        """Retire a pending row that must not go out; the audit row carries the reason's
        code beside its words (the words name labels and audiences)."""
        log.warning("pending relay %s to %s withheld: %s", row.txn_id, row.target_key, why)
        await self._retire(row, "relay.withheld", reason=why, reason_code=code)

    async def _retire(self, row: RelayEntry, action: str, **detail: str) -> None:
        """A pending row that will never be sent: marked stale, with why, in one write."""
        await in_thread(
            self.store.relay_state,
            row.txn_id,
            RelayState.STALE,
            AuditNote(
                self.messenger.user_id,
                action,
                row.item_event_id,
                {"to": row.target_key, "txn_id": row.txn_id, **detail},
            ),
        )

    async def pending_count(self) -> int:
        return len(await in_thread(self.store.pending_relays))

    def open_item(self, item: IntelItem) -> tuple[str, tuple[str, ...]]:
        """An item's text and topics, opened only in the items' own context and with the
        event, room and label it was stored under (a label lowered in the database, or a
        ledger row's copy written into an item row, does not open: SealError)."""
        sealed = self.item_sealer.open_text(
            item.text, item_binding(item.event_id, item.room_key, item.label)
        )
        return opened_payload(sealed, item.topics)

    async def reseal_legacy(self) -> tuple[int, int]:
        """Reseal, once, items and ledger rows sealed before they had contexts of their own
        (sealing version v1, one context "intel"; items from before the label binding open
        by their event id, ledger rows from before theirs by their transaction id). Only
        here do those old forms open, and only the first time: the audit entry
        `intel.resealed` records that it happened, and v1 values found after it were
        written into the database since; they are left unopened and the admins alerted.
        Returns (items, ledger rows) resealed."""
        items, ledger = await in_thread(self.store.sealed_with_version, "v1")
        if not items and not ledger:
            return 0, 0
        if (
            await in_thread(self.store.has_audit_action, "intel.resealed")
            or not (
                # No record of the reseal: the first start after the upgrade, or someone removed
                # or renamed it, which breaks the keyed audit chain. Only an intact chain counts.
                await in_thread(self.store.verify_audit)
            ).intact
        ):
            log.error(
                "%d item(s) and %d ledger row(s) in the old sealing format after the one-off "
                "reseal: written into the database since; left unopened",
                len(items),
                len(ledger),
            )
            await self.audit(
                self.messenger.user_id,
                "intel.reseal-refused",
                None,
                {"items": [i.event_id for i in items][:50], "ledger": len(ledger)},
            )
            # No transaction id: no event causes it; it is found at a start, and the counts
            # a later start finds are news of their own.
            await self.messenger.alert_admins(
                doc(
                    para(
                        f"⚠ {len(items)} item(s) and {len(ledger)} relay ledger row(s) in the "
                        "database are in the old sealing format, after they were all resealed "
                        "once (or with an audit log that is not intact): they were written "
                        "into the database since. They are not opened (not shown, searched or "
                        "sent). Check the audit log (audit verify) and who has write access "
                        "to the database."
                    )
                )
            )
            return 0, 0
        new_items: dict[str, str] = {}
        for item in items:
            binding = item_binding(item.event_id, item.room_key, item.label)
            for associated in (binding, item.event_id):
                try:
                    text = self._legacy_sealer.open_text(item.text, associated)
                except SealError:
                    continue
                payload = opened_payload(text, item.topics)
                new_items[item.event_id] = self.item_sealer.seal_text(
                    sealed_payload(*payload), binding
                )
                break
        new_ledger: dict[str, str] = {}
        for row in ledger:
            binding = ledger_binding(row.txn_id, row.target_key, row.target_room_id)
            for associated in (binding, row.txn_id):
                try:
                    content = self._legacy_sealer.open_text(row.content, associated)
                except SealError:
                    continue
                new_ledger[row.txn_id] = self.ledger_sealer.seal_text(content, binding)
                break
        unopened = len(items) - len(new_items) + len(ledger) - len(new_ledger)
        await in_thread(
            self.store.reseal,
            new_items,
            new_ledger,
            AuditNote(
                self.messenger.user_id,
                "intel.resealed",
                None,
                {"items": len(new_items), "ledger": len(new_ledger), "unopened": unopened},
            ),
        )
        log.info(
            "resealed %d item(s) and %d ledger row(s) in their own contexts (%d did not open)",
            len(new_items),
            len(new_ledger),
            unopened,
        )
        return len(new_items), len(new_ledger)

    async def _audit(
        self, actor: str, action: str, room: ManagedRoom, source: Source, detail: dict[str, Any]
    ) -> None:
        await self.audit(actor, action, source.event_id, {"room": room.key, **detail})
        result = _RESULTS.get(action)
        if result is not None:
            self.metrics.relays.labels(result).inc()


_RESULTS = {
    "relay.malformed": "malformed",
    "relay.untrusted-device": "untrusted_device",
    "relay.not-officer": "not_officer",
    "spillage": "spillage",
}
