"""Sending as the services see it: encrypted sends with room keys only for those who may
read, notices, replies a refused device can read, direct chats, admin alerts; and the
trusted-sender gate every command and tagged message passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from nio.crypto import OlmDevice
from nio.crypto.attachments import encrypt_attachment

from bot.config import BotConfig
from bot.matrix.gateway import Gateway
from bot.matrix.trust import DeviceTrust
from bot.services.ports import Audit
from bot.storage import ClearanceRecord, Store, in_thread
from bot.tasks import Supervisor
from bot.wire import EVENT_LIMIT, MEGOLM, encrypted_size, txn_id
from commands.document import Code, Document, Mention, Strong, doc, para, split_document
from commands.views import fingerprint
from policy.ids import EventId, UserId

log = logging.getLogger(__name__)

ALSO_TO_INTERVAL = 600.0  # seconds between one-off keys for the same excluded device


class DirectRooms:
    """The bot's direct chats, room id -> partner, kept in the store across restarts."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._partners: dict[str, UserId] = {}
        # Told of each DM added (the bot made it, or accepted a partner's invite).
        self.listeners: list[Callable[[str, UserId], None]] = []

    async def load(self) -> None:
        stored = await in_thread(self.store.direct_rooms)
        self._partners = {room: UserId(partner) for room, partner in stored.items()}

    def partner_of(self, room_id: str) -> UserId | None:
        return self._partners.get(room_id)

    def __contains__(self, room_id: object) -> bool:
        return room_id in self._partners

    def items(self) -> list[tuple[str, UserId]]:
        """(room id, partner) of every DM."""
        return list(self._partners.items())

    def rooms_with(self, user_id: str) -> list[str]:
        """This person's DMs, newest first."""
        return [r for r, p in reversed(self._partners.items()) if p == user_id]

    async def add(self, room_id: str, partner: UserId) -> None:
        self._partners[room_id] = partner
        await in_thread(self.store.save_direct_room, partner, room_id)
        for listener in self.listeners:
            listener(room_id, partner)

    async def forget(self, room_id: str) -> UserId | None:
        partner = self._partners.pop(room_id, None)
        if partner is not None:
            await in_thread(self.store.forget_direct_room, room_id)
        return partner


PART_MARK = doc(para("(part 9999 of 9999)"))  # room kept for the part number


def notice_content(document: Document, reply_to: str | None) -> dict[str, Any]:
    """An m.notice with the document as text and HTML, in reply to `reply_to` if given."""
    content: dict[str, Any] = {
        "msgtype": "m.notice",
        "body": document.plain,
        "format": "org.matrix.custom.html",
        "formatted_body": document.html,
    }
    if reply_to:
        content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
    return content


class Messenger:
    """Implements the services' Messenger and SenderGate ports over the gateway."""

    def __init__(
        self,
        gateway: Gateway,
        trust: DeviceTrust,
        settings: BotConfig,
        direct: DirectRooms,
        recipients: Callable[[str], list[UserId]],
        audit: Audit,
        tasks: Supervisor,
        next_sync: Callable[[float], Awaitable[None]],
        admin_room: Callable[[], str | None],
        refresh_readers: Callable[[str], Awaitable[None]],
    ) -> None:
        self.gateway = gateway
        self.trust = trust
        self.settings = settings
        self.direct = direct
        self.recipients = recipients  # room id -> who may hold its key (members who may read)
        self.audit = audit
        self.tasks = tasks
        self.next_sync = next_sync  # wait at most this long for the next handled sync
        self._also_to_sent: dict[tuple[str, str], float] = {}
        self.admin_room = admin_room  # the room id of [bot] admin_room, a managed room
        self.refresh_readers = refresh_readers  # re-read the members' clearances

    @property
    def user_id(self) -> str:
        return self.gateway.user_id

    # ------------------------------------------------------------ the device policy

    def device_trusted(self, user_id: str, device: OlmDevice) -> bool:
        """The device policy (`device_trust`), with identity pinning."""
        if device.deleted:
            return False
        return self.trust.trusted(user_id, device.id, device.ed25519)

    async def untrusted_sender(
        self, room_id: str, event: Any
    ) -> tuple[str, OlmDevice | None] | None:
        """The trusted-sender gate: None when the event's device passes the
        device policy, else (why not, the device when known). Tagged messages use it too."""
        device = self.gateway.sender_device(room_id, event)
        if device is None:
            await self.gateway.query_keys_if_due()
            device = self.gateway.sender_device(room_id, event)
        if device is None:
            return ("the sending device is unknown or its room key was forwarded", None)
        await self.trust.refresh([event.sender])
        problem = self.trust.device_problem(event.sender, device.id, device.ed25519)
        return (problem, device) if problem else None

    # ------------------------------------------------------------ sending

    async def send(
        self,
        room_id: str,
        content: dict[str, Any],
        tx_id: str | None = None,
        also_to: Sequence[OlmDevice] = (),
    ) -> EventId:
        also_to = self._rationed(also_to)
        await self.gateway.ensure_current_members(room_id)
        await self.refresh_readers(room_id)
        await self.trust.refresh(self.recipients(room_id))
        event_id = await self.gateway.send(
            room_id,
            content,
            recipients=lambda: self.recipients(room_id),
            device_trusted=self.device_trusted,
            tx_id=tx_id,
            also_to=also_to,
        )
        return EventId(event_id)

    async def send_image(
        self,
        room_id: str,
        png: bytes,
        *,
        width: int,
        height: int,
        alt: str,
        label_content: Mapping[str, Any],
        thumbnail: tuple[bytes, int, int] | None = None,
        tx_id: str | None = None,
    ) -> EventId:
        """An m.image: the PNG (and its thumbnail) encrypted with a fresh key each and
        uploaded, the keys only inside the event, which goes through `send` like any text
        (room keys for the readers' trusted devices only). The homeserver holds ciphertext.
        `label_content` (the label the text beside it carries) goes into the content."""
        info: dict[str, Any] = {"mimetype": "image/png", "w": width, "h": height, "size": len(png)}
        if thumbnail is not None:
            small, small_w, small_h = thumbnail
            info["thumbnail_file"] = await self._upload_encrypted(small, "thumbnail.png")
            info["thumbnail_info"] = {
                "mimetype": "image/png",
                "w": small_w,
                "h": small_h,
                "size": len(small),
            }
        content: dict[str, Any] = {
            "msgtype": "m.image",
            "body": alt,
            "filename": "digest-chart.png",
            "file": await self._upload_encrypted(png, "digest-chart.png"),
            "info": info,
            **label_content,
        }
        return await self.send(room_id, content, tx_id=tx_id)

    async def _upload_encrypted(self, data: bytes, filename: str) -> dict[str, Any]:
        """Encrypt (AES-CTR, as the spec's EncryptedFile) off the loop and upload: the
        `file` object naming the upload with its key, iv and ciphertext hash."""
        ciphertext, keys = await asyncio.to_thread(encrypt_attachment, data)
        url = await self.gateway.upload(ciphertext, "application/octet-stream", filename)
        return {"url": url, **keys}

    def _rationed(self, devices: Sequence[OlmDevice]) -> list[OlmDevice]:
        """Devices outside the policy that may read this one event. Each costs every member
        a fresh room key, and anyone can make the bot answer an unverified device: at most
        one such event per device every ALSO_TO_INTERVAL seconds; later ones still go to
        the room, unreadable to that device."""
        now = time.monotonic()
        allowed = []
        for device in devices:
            key = (device.user_id, device.id)
            if now - self._also_to_sent.get(key, -ALSO_TO_INTERVAL) >= ALSO_TO_INTERVAL:
                self._also_to_sent[key] = now
                allowed.append(device)
        while len(self._also_to_sent) > 10_000:
            self._also_to_sent.pop(next(iter(self._also_to_sent)))
        return allowed

    async def send_notice(
        self,
        room_id: str,
        document: Document,
        reply_to: str | None = None,
        also_to: Sequence[OlmDevice] = (),
        tx_id: str | None = None,
    ) -> EventId:
        content = notice_content(document, reply_to)
        if encrypted_size(content) <= EVENT_LIMIT:
            return await self.send(room_id, content, also_to=also_to, tx_id=tx_id)
        # Too big for one event (`!rooms` with a thousand rooms): several notices, in order,
        # each cut between lines; the first answers the question. A single line too big on
        # its own is left for the homeserver to refuse.
        parts = split_document(
            document,
            lambda part: encrypted_size(notice_content(part + PART_MARK, reply_to)) <= EVENT_LIMIT,
        )
        first: EventId | None = None
        for n, part in enumerate(parts, 1):
            numbered = part + doc(para(f"(part {n} of {len(parts)})"))
            sent = await self.send(
                room_id,
                notice_content(numbered, reply_to if n == 1 else None),
                also_to=also_to,
                tx_id=f"{tx_id}-{n}of{len(parts)}" if tx_id else None,
            )
            first = first or sent
        assert first is not None
        return first

    async def redact(self, room_id: str, event_id: str, reason: str, tx_id: str) -> None:
        await self.gateway.redact(room_id, event_id, reason, tx_id)

    async def sender_of(self, room_id: str, event_id: str) -> str | None:
        return await self.gateway.event_sender(room_id, event_id)

    async def reply_to_sender(
        self, room_id: str, event: Any, reply: Document, *, tx_id: str
    ) -> None:
        """A reply the sending device can read even when the policy excludes it (it is told
        why it was refused). `tx_id` is fixed by what it answers: a reply always has a cause."""
        device = self.gateway.sender_device(room_id, event)
        also = (
            [device] if device is not None and not self.device_trusted(event.sender, device) else []
        )
        await self.send_notice(room_id, reply, event.event_id, also_to=also, tx_id=tx_id)

    # ------------------------------------------------------------ direct chats and alerts

    async def alert_admins(self, document: Document, tx_id: str | None = None) -> None:
        """To [bot] admin_room (a managed room: its label decides who gets the key, and
        only admins stay in it), else to each admin's direct message with the bot. An alert
        about an event comes with a `tx_id` fixed by that event; each room it goes to gets
        its own id made from it (one alert, several DMs)."""
        admin_room = self.admin_room()
        targets = (
            [admin_room]
            if admin_room is not None
            else [await self.direct_room_for(admin) for admin in self.settings.admins]
        )
        for room_id in targets:
            if room_id is not None:
                room_tx = txn_id("alert", room_id, tx_id) if tx_id is not None else None
                self.tasks.spawn(
                    self.send_when_ready(room_id, document, tx_id=room_tx), f"alert-{room_id}"
                )

    async def alert_identity_change(self, record: ClearanceRecord, new_key: str) -> None:
        # No transaction id: a key query, not an event, finds the change, and the store
        # flags it once (a standby finds it flagged); a key changed back and again within
        # the homeserver's memory of ids must be alerted again, not taken for this one.
        await self.alert_admins(
            doc(
                para(
                    "⚠ Identity change: ",
                    Mention(record.user_id),
                    "'s cross-signing master key changed. Room keys are no longer shared with "
                    "them. Pinned: ",
                    Code(fingerprint(record.identity_key or "")),
                    "; now: ",
                    Code(fingerprint(new_key)),
                    ".",
                ),
                para(
                    "After checking the new key with them out of band: ",
                    Code(f"!clearance confirm-identity {record.user_id} {new_key}"),
                ),
            )
        )

    def watch_register(self, store: Store) -> None:
        """Alert the admins the first time a register or room row that does not verify is
        refused (written into the database behind the bot's back). The store calls from the
        thread that read the row, inside its transaction: the alert is handed to the loop."""
        loop = asyncio.get_running_loop()

        def refused(kind: str, name: str) -> None:
            loop.call_soon_threadsafe(self._register_refused, kind, name)

        store.add_refusal_listener(refused)

    def _register_refused(self, kind: str, name: str) -> None:
        subject = Mention(name) if kind == "clearance" else Strong(name)
        alert = doc(
            para(
                f"⚠ Refused a {kind} row of the database that does not verify: ",
                subject,
                ". It was changed outside the bot (write access to the database?) and is "
                "treated as absent: nobody is cleared and no room is managed by it. Check "
                "the audit log (register.refused) and restore the row from a backup.",
            )
        )
        # No transaction id: no event causes it; each process alerts once per row it refuses.
        self.tasks.spawn(self.alert_admins(alert), f"alert-register-{kind}-{name}")

    def send_later(self, room_id: str, document: Document, tx_id: str | None = None) -> None:
        """Send in the background once the room is ready (`send_when_ready`)."""
        self.tasks.spawn(self.send_when_ready(room_id, document, tx_id), f"send-{room_id}")

    async def direct_room_for(self, user_id: UserId) -> str:
        """The DM with this person, created (encrypted) if there is none."""
        for room_id in self.direct.rooms_with(user_id):  # the newest usable DM wins
            members = self.gateway.members(room_id)
            if members is None:
                return room_id  # made by the bot a moment ago, not synced yet
            # Reused only while encrypted and theirs alone: not one they left (they would
            # never read it), not one others have joined.
            if (
                self.gateway.is_encrypted(room_id)
                and user_id in members
                and set(members) <= {user_id, self.user_id}
            ):
                return room_id
        room_id = await self.gateway.create_room(
            name=None,
            topic=None,
            is_direct=True,
            invite=[user_id],
            # Like every room the bot makes: encrypted from its first event, history from
            # joining, no guests (the preset alone would say "shared" and "can_join").
            initial_state=[
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}},
                {
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": {"history_visibility": "joined"},
                },
                {
                    "type": "m.room.guest_access",
                    "state_key": "",
                    "content": {"guest_access": "forbidden"},
                },
            ],
        )
        self.gateway.mark_members_stale(room_id)
        await self.direct.add(room_id, user_id)
        return room_id

    def _ready_for(self, room_id: str) -> bool:
        """The room is synced and, in a DM, its partner has joined (what is sent before
        the join could never be read: history is visible from joining)."""
        members = self.gateway.members(room_id)
        if members is None:
            return False
        partner = self.direct.partner_of(room_id)
        return partner is None or bool(members.get(partner))

    async def send_when_ready(
        self, room_id: str, document: Document, tx_id: str | None = None
    ) -> None:
        """Send once the room is ready (`_ready_for`), judged after each sync; a reply whose
        reader does not join within `dm_join_timeout` is dropped and audited, never sent."""
        timeout = self.settings.dm_join_timeout.total_seconds()
        deadline = time.monotonic() + timeout
        stopping = self.tasks.stopping
        while not self._ready_for(room_id):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or stopping.is_set():
                partner = self.direct.partner_of(room_id)
                why = "the bot stopped" if stopping.is_set() else f"not joined in {timeout:g} s"
                log.warning("a reply to %s in %s was dropped: %s", partner, room_id, why)
                await self.audit(
                    self.user_id, "dm.reply.dropped", partner, {"room_id": room_id, "reason": why}
                )
                return
            with contextlib.suppress(TimeoutError):
                await self.next_sync(remaining)
        await self.send_notice(room_id, document, tx_id=tx_id)
