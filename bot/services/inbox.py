"""Messages people send in the bot's rooms: commands, tagged intelligence, their edits.

Every message is acted on once (the handled-event table, even when a crash replays the
sync), commands only from devices that pass the trusted-sender gate, and never in a room
without encryption. Replies go where the command asks (the room, or the sender's DM).

Receipts scale with bursts: tagged messages that one sync batch brings from one sender's
device in one room get one receipt at the end of the batch, listing each message (by time
and event id, never its words) and, for each, where it went or why not. A message alone in
its batch gets its own receipt, as before. Nothing in a receipt is merged away: every
refusal of every message is in it.

Every answer, refusal and alert has a transaction id fixed by the event(s) it answers
(`bot.wire.txn_id`): the same message handled again, after a crash or by a standby that took
over, gives the same event, not a second one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from bot.services.membership import Membership
from bot.services.ports import Audit, EventHandle, SenderGate
from bot.services.relay import RelayEngine, Source
from bot.services.rooms import ManagedRoom, RoomDirectory
from bot.storage import Store, in_thread
from bot.tasks import Supervisor
from bot.wire import txn_id
from commands.context import Invocation, Reply
from commands.dispatch import dispatch, is_command
from commands.document import Code, Document, Mention, Strong, doc, para
from commands.registry import Registry
from commands.services import Services
from commands.slash import Vocabulary
from policy import is_tagged
from policy.ids import EventId, RoomId, UserId

log = logging.getLogger(__name__)


# A machine-readable label as a message carries it: the XML form or the JSON form.
LabelField = str | Mapping[str, Any]


@dataclass(frozen=True)
class MessageFields:
    """What the bot reads of a message's content, checked against its schema at the Matrix
    edge (bot/matrix/schemas.py): services never read raw content, whose types any member
    chooses. `problem` set means the content was malformed: it names the field and what was
    wrong (never the value), and nothing else was read except an edit's new text, which is
    kept only so spillage in it can be removed."""

    label: LabelField | None = None
    mentions: tuple[UserId, ...] = ()
    replaces: EventId | None = None  # an edit (m.replace) of this event
    new_body: str | None = None
    new_label: LabelField | None = None
    problem: str | None = None
    shown: str | None = None  # the text of the formatted body: what most clients show
    # A structured command (MSC4332 `org.matrix.msc4332.command`): {"syntax", "arguments"},
    # its shape and size checked, its values not yet (the command's parser judges them).
    structured: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class IncomingMessage:
    """A decrypted text message, as the event router hands it over."""

    room_id: RoomId
    event_id: EventId
    sender: UserId
    body: str
    formatted_body: str | None
    fields: MessageFields
    sent_at: datetime
    handle: EventHandle  # the edge's own event, for the sender gate and replies
    # the encrypted message it came from (sender key, session, index); None if in clear
    ciphertext: str | None = None


class Replier(Protocol):
    """What the inbox needs of the messenger. Everything the inbox sends answers an event,
    so each send takes its transaction id (the messenger makes random ones only for sends
    without a cause)."""

    async def send_notice(
        self,
        room_id: str,
        document: Document,
        reply_to: str | None = None,
        also_to: Sequence[Any] = (),
        *,
        tx_id: str,
    ) -> str: ...

    async def reply_to_sender(
        self, room_id: str, event: EventHandle, reply: Document, *, tx_id: str
    ) -> None: ...

    async def direct_room_for(self, user_id: UserId) -> str: ...

    def send_later(self, room_id: str, document: Document, tx_id: str) -> None: ...

    async def alert_admins(self, document: Document, tx_id: str) -> None: ...


@dataclass(frozen=True)
class _Tagged:
    event_id: EventId
    handle: EventHandle
    sent_at: datetime
    receipt: Awaitable[Document]


@dataclass
class ReceiptBatch:
    """The tagged messages of one sync batch, by (room, sender, sending device), in the
    order they came. By device: a refusal may go to a device the policy excludes (it is told
    why), and it must learn nothing of what the person's other devices sent."""

    pending: dict[tuple[RoomId, UserId, str], list[_Tagged]] = field(default_factory=dict)


def batched_receipt(receipts: Sequence[tuple[_Tagged, Document]]) -> Document:
    """One receipt for several tagged messages: each named by when it was sent and its event
    id (never by its words: one of them may be spillage the bot just removed), then its own
    receipt."""
    blocks = doc(f"Receipt for your {len(receipts)} tagged messages, in the order sent:")
    for n, (tagged, receipt) in enumerate(receipts, 1):
        blocks += doc(
            para(Strong(f"{n}. "), f"sent {tagged.sent_at:%H:%M:%S}Z ", Code(tagged.event_id))
        )
        blocks += receipt
    return blocks


def receipt_txn(room_id: str, tagged: Sequence[EventId]) -> str:
    """A receipt's id: fixed by the messages it answers (the same batch handled again gives
    the same id; a batch cut otherwise, a receipt of its own)."""
    return txn_id("receipt", room_id, *tagged)


class RoomState(Protocol):
    def is_encrypted(self, room_id: str) -> bool | None: ...


class Inbox:
    def __init__(
        self,
        store: Store,
        rooms: RoomDirectory,
        membership: Membership,
        relay: RelayEngine,
        gate: SenderGate,
        replier: Replier,
        room_state: RoomState,
        audit: Audit,
        tasks: Supervisor,
        registry: Registry,
        services: Services,
        prefixes: Sequence[str],
        *,
        user_id: str = "",
        vocabulary: Callable[[], Vocabulary] = Vocabulary,
    ) -> None:
        self.store = store
        self.rooms = rooms
        self.membership = membership
        self.relay = relay
        self.gate = gate
        self.replier = replier
        self.room_state = room_state
        self.audit = audit
        self.tasks = tasks
        self.registry = registry
        self.services = services
        self.prefixes = prefixes
        self.user_id = user_id  # the bot's own: a structured command must mention it
        self.vocabulary = vocabulary  # the enum values of the moment, for structured commands

    async def on_message(self, message: IncomingMessage, batch: ReceiptBatch | None = None) -> None:
        """Act on one message. With `batch`, a tagged message's receipt waits for
        `end_batch` (its copies are already on their way); without, it is sent on its own.

        A structured command (MSC4332) that mentions the bot is a command whatever its body
        says, and goes the typed commands' way (replay check, encryption, trusted-sender
        gate, dispatch, handled-event mark); its values, not its body, say what is run."""
        room_id = message.room_id
        managed = self.rooms.by_id.get(room_id)
        fields = message.fields
        if fields.problem is not None:
            await self._malformed(message, managed, fields.problem)
            return
        if fields.replaces is not None:  # an edit: never a command
            if managed is not None:
                await self._on_edit(message, managed, fields.replaces)
            return
        structured = fields.structured
        # What clients show (the formatted body; a structured command's body, which need
        # not start with the prefix) marked above the room is spillage, removed as such.
        shown = [fields.shown] + ([message.body] if structured is not None else [])
        if managed is not None and any(t is not None for t in shown):
            own = Source(managed, message.event_id, message.sender, message.sent_at, message.handle)
            if await self.relay.remove_if_spilled(own, shown):
                await in_thread(self.store.mark_handled, message.event_id, room_id)
                return
        foreign = structured is not None and UserId(self.user_id) not in fields.mentions
        if foreign:
            # A structured command for another bot (MSC4332 commands mention the bot they
            # are for): not this bot's command, whatever its body says; still a message
            # (a tagged one is relayed and judged like any other).
            structured = None
        command = structured is not None or (
            not foreign and is_command(message.body, self.prefixes)
        )
        labelled = fields.label
        if not command and not (
            managed is not None and (is_tagged(message.body) or labelled is not None)
        ):
            return
        if await in_thread(self.store.is_handled, message.event_id):
            return
        if await self._replayed(message):
            return
        if not command and managed is not None:
            source = Source(
                managed, message.event_id, message.sender, message.sent_at, message.handle
            )
            pending = await self.relay.begin(source, message.body, label_field=labelled)
            if pending is not None and batch is not None:
                # Its copies go out while the next message is checked and stored.
                sender_key = (message.ciphertext or "").partition("|")[0]  # its device
                batch.pending.setdefault((room_id, message.sender, sender_key), []).append(
                    _Tagged(message.event_id, message.handle, message.sent_at, pending)
                )
                return
            reply = None if pending is None else await pending
            await in_thread(self.store.mark_handled, message.event_id, room_id)
            if reply is not None:
                # The receipt goes to the source room while the next message's copies go to
                # the targets; the batch waits for it before the sync token moves.
                self.tasks.defer(
                    self.replier.reply_to_sender(
                        room_id,
                        message.handle,
                        reply,
                        tx_id=receipt_txn(room_id, [message.event_id]),
                    )
                )
            return
        if self.room_state.is_encrypted(room_id) is False:
            await self.audit(
                message.sender,
                "command.refused",
                None,
                {
                    "room_id": room_id,
                    "reason": "room not encrypted",
                    "reason_code": "room.not_encrypted",
                },
            )
            # Not answered: nothing but room state goes to a room without encryption.
            log.warning("command in unencrypted room %s refused", room_id)
            await in_thread(self.store.mark_handled, message.event_id, room_id)
            return
        refusal = await self.gate.untrusted_sender(room_id, message.handle)
        if refusal is not None:
            problem, device = refusal
            await self.audit(
                message.sender,
                "command.untrusted-device",
                None,
                {"room_id": room_id, "problem": problem},
            )
            await self.replier.send_notice(
                room_id,
                doc(
                    para(
                        "⚠ Not acted on: ",
                        problem,
                        ". The bot takes commands only from "
                        "devices their owner has verified (cross-signed). Nothing was changed.",
                    )
                ),
                message.event_id,
                also_to=[device] if device is not None else [],
                tx_id=txn_id("refusal", room_id, message.event_id),
            )
            await in_thread(self.store.mark_handled, message.event_id, room_id)
            return
        mentions = fields.mentions
        invocation = Invocation(
            sender=message.sender,
            room_id=room_id,
            event_id=message.event_id,
            body=message.body,
            formatted_body=message.formatted_body,
            mentions=mentions,
            room_key=managed.key if managed else None,
            is_direct=managed is None,
            event=message.handle,
            sent_at=message.sent_at,
            structured=structured,
        )
        outcome = await dispatch(
            self.registry,
            invocation,
            self.membership.roles_of(message.sender),
            self.services,
            self.prefixes,
            vocabulary=self.vocabulary() if structured is not None else None,
        )
        if outcome is not None:
            await self._reply(invocation, outcome.reply)
        await in_thread(self.store.mark_handled, message.event_id, room_id)

    async def end_batch(self, batch: ReceiptBatch) -> None:
        """The batch's tagged messages, once their copies went out (or were queued for a
        retry): marked handled, and one receipt per sending device and room, in reply to the
        last, sent while the sync goes on (the batch waits for it before the sync token
        moves). An error in a send propagates, so the batch is handled again and nothing is
        marked handled unsent."""
        for (room_id, _sender, _device), tagged in batch.pending.items():
            receipts = [await t.receipt for t in tagged]
            for t in tagged:
                await in_thread(self.store.mark_handled, t.event_id, room_id)
            receipt = (
                receipts[0]
                if len(tagged) == 1
                else batched_receipt(list(zip(tagged, receipts, strict=True)))
            )
            # One device sent them all, so the last one names whom to tell.
            self.tasks.defer(
                self.replier.reply_to_sender(
                    room_id,
                    tagged[-1].handle,
                    receipt,
                    tx_id=receipt_txn(room_id, [t.event_id for t in tagged]),
                )
            )
        batch.pending.clear()

    async def _replayed(self, message: IncomingMessage) -> bool:
        """An encrypted message already acted on under another event id (sent again with
        a stolen access token after a restart emptied nio's replay cache): refused, audited,
        the admins alerted. True if refused."""
        if message.ciphertext is None or await in_thread(
            self.store.claim_ciphertext, message.ciphertext, message.event_id
        ):
            return False
        log.warning("replayed message %s from %s refused", message.event_id, message.sender)
        await self.audit(
            message.sender,
            "replay.refused",
            message.event_id,
            {"room_id": message.room_id},
        )
        await in_thread(self.store.mark_handled, message.event_id, message.room_id)
        await self.replier.alert_admins(
            doc(
                para(
                    "⚠ Replay refused: ",
                    Mention(message.sender),
                    " sent again an encrypted message the bot had already acted on (",
                    Code(message.event_id),
                    "). Someone may hold their access token: check their sessions.",
                )
            ),
            txn_id("alert-replay", message.event_id),
        )
        return True

    async def _on_edit(
        self, message: IncomingMessage, managed: ManagedRoom, original: EventId
    ) -> None:
        if await in_thread(self.store.is_handled, message.event_id):
            return
        if await self._replayed(message):
            return
        new_body = message.fields.new_body
        # The edit's own fallback text (`* …`) is what older clients show. Spillage in it
        # under a harmless new text is the edit's alone: it is removed, nothing else is done.
        # (Spillage in the new text is the edit path's, which withdraws what it must.)
        if self.relay.names_level_above(managed, message.body) and not (
            new_body is not None and self.relay.names_level_above(managed, new_body)
        ):
            own = Source(managed, message.event_id, message.sender, message.sent_at, message.handle)
            await self.relay.remove_if_spilled(own, [message.body])
            await in_thread(self.store.mark_handled, message.event_id, message.room_id)
            return
        if new_body is not None:
            source = Source(managed, original, message.sender, message.sent_at, message.handle)
            reply = await self.relay.handle_edit(
                source, new_body, label_field=message.fields.new_label
            )
            if reply is not None:
                await self.replier.reply_to_sender(
                    message.room_id,
                    message.handle,
                    reply,
                    tx_id=txn_id("edit-reply", message.room_id, message.event_id),
                )
        await in_thread(self.store.mark_handled, message.event_id, message.room_id)

    async def _malformed(
        self, message: IncomingMessage, managed: ManagedRoom | None, problem: str
    ) -> None:
        """A message whose content does not fit its schema: not acted on (no command, no
        relay), audited with the problem (never the words), and, in a managed room, its text
        still judged for spillage: a marking above the room in a broken event is removed
        like any other. The sender hears what was wrong when it looked like a command or
        intelligence."""
        if await in_thread(self.store.is_handled, message.event_id):
            return
        log.warning("malformed message %s from %s: %s", message.event_id, message.sender, problem)
        await self.audit(
            message.sender,
            "event.malformed",
            message.event_id,
            {"room_id": message.room_id, "problem": problem},
        )
        removed = False
        if managed is not None:
            source = Source(
                managed, message.event_id, message.sender, message.sent_at, message.handle
            )
            removed = await self.relay.remove_if_spilled(
                source, [message.body, message.fields.new_body]
            )
        looked_like = is_command(message.body, self.prefixes) or is_tagged(message.body)
        if not removed and looked_like and self.room_state.is_encrypted(message.room_id):
            await self.replier.reply_to_sender(
                message.room_id,
                message.handle,
                doc(
                    para(
                        "⚠ Not acted on: the message's content is malformed (",
                        problem,
                        "). Nothing was stored, relayed or changed; your client may be "
                        "out of date.",
                    )
                ),
                tx_id=txn_id("malformed", message.room_id, message.event_id),
            )
        await in_thread(self.store.mark_handled, message.event_id, message.room_id)

    async def _reply(self, invocation: Invocation, reply: Reply) -> None:
        """The command's answer, in the room or (private) in the sender's DM with a pointer
        to it in the room; each with its own id fixed by the command's event."""
        room_id, event_id = invocation.room_id, invocation.event_id
        if not reply.private or invocation.is_direct:
            await self.replier.send_notice(
                room_id, reply.document, event_id, tx_id=txn_id("answer", room_id, event_id)
            )
            return
        dm = await self.replier.direct_room_for(invocation.sender)
        await self.replier.send_notice(
            room_id,
            doc("Answered in your direct messages with the bot."),
            event_id,
            tx_id=txn_id("answer-pointer", room_id, event_id),
        )
        self.replier.send_later(dm, reply.document, txn_id("answer", dm, event_id))
