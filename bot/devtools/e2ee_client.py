"""A person's Matrix client with E2EE, as the demo and the tests use it: it joins, sends,
waits for what the bot posts and reads it decrypted.

This is the *user* side: it trusts every device it sees (the bot must not, and does not
share this code), and cross-signs its own device as Element does. It records every timeline
event of every room, decrypted where possible, and retries decryption when late keys arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    Event,
    InviteMemberEvent,
    JoinedRoomsResponse,
    LoginResponse,
    MatrixRoom,
    MegolmEvent,
    MemoryDownloadResponse,
    RoomCreateResponse,
    RoomGetStateResponse,
    RoomMemberEvent,
    RoomMessageNotice,
    RoomMessageText,
    RoomPreset,
    RoomSendResponse,
    RoomVisibility,
    SyncResponse,
)
from nio.crypto.attachments import decrypt_attachment
from nio.crypto.key_request import OutgoingKeyRequest
from nio.exceptions import EncryptionError, OlmUnverifiedDeviceError

from bot.devtools.devserver import DevServer, RegisteredUser
from bot.matrix.crosssign import CrossSigningKeys

log = logging.getLogger(__name__)

MEGOLM = "m.megolm.v1.aes-sha2"
# A long timeline limit so that a burst of messages between two syncs is never cut short
# ("limited" timeline), which would silently drop the events a test waits for.
SYNC_FILTER: dict[str, Any] = {"room": {"timeline": {"limit": 200}}}
SYNC_TIMEOUT_MS = 1500

T = TypeVar("T")


class E2EEClient:
    """A nio client with E2EE that records everything it sees, for asserting on.

    Every timeline event of every room (joined or left) is kept in order, decrypted where
    possible; events whose keys arrive late are decrypted again when the keys show up, so a
    `MegolmEvent` left in `events` really is undecryptable.
    """

    def __init__(self, client: AsyncClient, user: RegisteredUser, auto_join: bool) -> None:
        self.client = client
        self.user = user
        self.auto_join = auto_join
        self.events: defaultdict[str, list[Event]] = defaultdict(list)
        self.invites: list[tuple[str, str | None]] = []  # (room_id, inviter), in order seen
        self._invites_taken = 0
        self._pending_invites: set[str] = set()
        self._changed = asyncio.Event()
        self._keys_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._first_sync = asyncio.Event()
        self._syncs_done = 0  # completed rounds of the sync loop (sync, keys, decryption)

    @property
    def user_id(self) -> str:
        return self.user.user_id

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    @classmethod
    async def create(
        cls,
        server: DevServer,
        user: RegisteredUser,
        store_dir: Path,
        *,
        auto_join: bool = False,
        device_name: str = "liaison-test",
    ) -> E2EEClient:
        """Log in as a new device (never the registration one, which has no keys)."""
        store_dir.mkdir(parents=True, exist_ok=True)
        config = AsyncClientConfig(
            encryption_enabled=True,
            store_sync_tokens=False,
            pickle_key="liaison-test-pickle-key",
            # Reconnect within ~2 s after the homeserver comes back from an outage test.
            max_timeout_retry_wait_time=2,
            request_timeout=30,
        )
        client = AsyncClient(
            server.base_url, user.user_id, store_path=str(store_dir), config=config
        )
        response = await client.login(password=user.password, device_name=device_name)
        if not isinstance(response, LoginResponse):
            await client.close()
            raise AssertionError(f"login of {user.user_id} failed: {response}")
        if client.should_upload_keys:
            _check(await client.keys_upload(), "keys upload")
        _accept_forwards_from_session_creators(client)
        return cls(client, user, auto_join)

    # -- sync loop ---------------------------------------------------------------------------

    async def start(self, timeout: float = 30) -> None:
        """Start syncing in the background and return after the first sync."""
        if self._task is None:
            self._task = asyncio.create_task(self._sync_loop(), name=f"sync {self.user_id}")
        await self._wait_until(
            lambda: True if self._first_sync.is_set() else None,
            timeout,
            lambda: f"{self.user_id}: first sync did not finish",
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.close()

    async def _sync_loop(self) -> None:
        """Like nio's sync_forever, but it survives errors (an outage must not end it)."""
        first = True
        while True:
            try:
                response = await self.client.sync(
                    timeout=0 if first else SYNC_TIMEOUT_MS,
                    sync_filter=SYNC_FILTER,
                    full_state=True if first else None,
                )
                if isinstance(response, SyncResponse):
                    await self._record(response)
                    first = False
                else:
                    log.warning("%s: sync failed: %s", self.user_id, response)
                    await asyncio.sleep(0.5)
                    continue
                await self.client.send_to_device_messages()
                await self._maintain_keys()
                self._retry_decryption()
                self._syncs_done += 1
                self._first_sync.set()
                self._notify()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: error in sync loop, retrying", self.user_id)
                await asyncio.sleep(0.5)

    async def _maintain_keys(self) -> None:
        """Upload, query and claim keys as nio's own loop would; shared with send_text."""
        async with self._keys_lock:
            client = self.client
            if client.should_upload_keys:
                _check(await client.keys_upload(), "keys upload")
            if client.should_query_keys:
                _check(await client.keys_query(), "keys query")
            if client.should_claim_keys:
                users = client.get_users_for_key_claiming()
                if users:
                    _check(await client.keys_claim(users), "keys claim")

    async def _record(self, response: SyncResponse) -> None:
        # nio has already decrypted what it could in place (receive_response).
        for room_id, info in response.rooms.join.items():
            self._add_events(room_id, info.timeline.events)
            self._pending_invites.discard(room_id)
        for room_id, left in response.rooms.leave.items():
            self._add_events(room_id, left.timeline.events)
            self._pending_invites.discard(room_id)
        for room_id, invited in response.rooms.invite.items():
            # The same invite can show up in more than one sync; a new invite after a
            # join or leave (a re-invite after a kick) counts again.
            if room_id in self._pending_invites:
                continue
            self._pending_invites.add(room_id)
            inviter = next(
                (
                    ev.sender
                    for ev in invited.invite_state
                    if isinstance(ev, InviteMemberEvent)
                    and ev.state_key == self.user_id
                    and ev.membership == "invite"
                ),
                None,
            )
            self.invites.append((room_id, inviter))
            if self.auto_join:
                joined = await self.client.join(room_id)
                if isinstance(joined, ErrorResponse):
                    log.warning("%s: auto-join of %s failed: %s", self.user_id, room_id, joined)

    def _add_events(self, room_id: str, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, MegolmEvent):
                event.room_id = room_id
            self.events[room_id].append(event)

    def _retry_decryption(self) -> None:
        """Decrypt events whose room key arrived after them (a to-device race)."""
        olm = self.client.olm
        if olm is None:
            return
        for room_id, events in self.events.items():
            for index, event in enumerate(events):
                if not isinstance(event, MegolmEvent):
                    continue
                # Only try once the session exists: a failed attempt logs and may mark the
                # sender's Olm session as wedged.
                if olm.inbound_group_store.get(room_id, event.sender_key, event.session_id):
                    with contextlib.suppress(EncryptionError):
                        events[index] = self.client.decrypt_event(event)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _wait_until(
        self, check: Callable[[], T | None], timeout: float, describe: Callable[[], str]
    ) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed = self._changed
            result = check()
            if result is not None:
                return result
            if self._task is not None and self._task.done():
                raise AssertionError(f"{self.user_id}: sync loop ended\n{describe()}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(describe())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    # -- waiting for things ------------------------------------------------------------------

    async def synced(self, timeout: float = 30) -> None:
        """Return once a whole round of the sync loop has run that began after this call:
        whatever the homeserver held for this device when called (timeline events, room keys
        sent to it) has been received, and decrypted where its key came."""
        target = self._syncs_done + 2  # the round under way may have begun before the call
        await self._wait_until(
            lambda: True if self._syncs_done >= target else None,
            timeout,
            lambda: f"{self.user_id}: no complete sync within {timeout:g} s",
        )

    def event_count(self, room_id: str) -> int:
        """A mark to pass as `after=` so that a wait only looks at later events."""
        return len(self.events.get(room_id, []))

    async def wait_for(
        self,
        room_id: str,
        predicate: Callable[[Event], bool],
        timeout: float = 30,
        *,
        after: int = 0,
    ) -> Event:
        """The first event in the room (from index `after` on) that satisfies predicate."""

        def check() -> Event | None:
            return next((e for e in self.events.get(room_id, [])[after:] if predicate(e)), None)

        return await self._wait_until(
            check,
            timeout,
            lambda: (
                f"{self.user_id}: no matching event in {room_id} after {timeout:g} s\n"
                + self.summary(room_id)
            ),
        )

    async def wait_for_text(
        self, room_id: str, substring: str, timeout: float = 30, *, after: int = 0
    ) -> RoomMessageText | RoomMessageNotice:
        """The first decrypted text or notice whose body contains substring."""

        def matches(event: Event) -> bool:
            return (
                isinstance(event, (RoomMessageText, RoomMessageNotice)) and substring in event.body
            )

        try:
            event = await self.wait_for(room_id, matches, timeout, after=after)
        except AssertionError as exc:
            raise AssertionError(f"text {substring!r} not seen: {exc}") from None
        assert isinstance(event, (RoomMessageText, RoomMessageNotice))
        return event

    async def wait_for_invite(self, timeout: float = 30, *, inviter: str | None = None) -> str:
        """The next invite (in arrival order) not returned by an earlier call."""

        def check() -> str | None:
            for index in range(self._invites_taken, len(self.invites)):
                room_id, sender = self.invites[index]
                if inviter is None or sender == inviter:
                    self._invites_taken = index + 1
                    return room_id
            return None

        return await self._wait_until(
            check,
            timeout,
            lambda: (
                f"{self.user_id}: no invite{f' from {inviter}' if inviter else ''} "
                f"after {timeout:g} s; invites so far: {self.invites}"
            ),
        )

    async def wait_for_room(self, room_id: str, timeout: float = 30) -> MatrixRoom:
        """The room once a sync has shown it joined (needed before sending to it)."""
        return await self._wait_until(
            lambda: self.client.rooms.get(room_id),
            timeout,
            lambda: f"{self.user_id}: room {room_id} not synced; known: {list(self.client.rooms)}",
        )

    def undecryptable(self, room_id: str) -> list[MegolmEvent]:
        return [e for e in self.events.get(room_id, []) if isinstance(e, MegolmEvent)]

    def texts(self, room_id: str) -> list[str]:
        """Bodies of the decrypted texts and notices, in order."""
        return [
            e.body
            for e in self.events.get(room_id, [])
            if isinstance(e, (RoomMessageText, RoomMessageNotice))
        ]

    def summary(self, room_id: str, last: int = 30) -> str:
        """What this client saw in the room, for assertion messages."""
        events = self.events.get(room_id, [])
        lines = [f"{len(events)} event(s) in {room_id}; last {min(last, len(events))}:"]
        for event in events[-last:]:
            lines.append(f"  {_describe(event)}")
        if room_id not in self.events:
            lines.append(f"  (rooms with events: {sorted(self.events)})")
        return "\n".join(lines)

    # -- acting ------------------------------------------------------------------------------

    async def join(self, room_id: str, timeout: float = 30) -> None:
        """Join and wait for the sync that makes the room usable for sending."""
        _check(await self.client.join(room_id), f"join {room_id}")
        await self.wait_for_room(room_id, timeout)

    async def leave(self, room_id: str) -> None:
        _check(await self.client.room_leave(room_id), f"leave {room_id}")

    async def invite(self, room_id: str, user_id: str) -> None:
        _check(await self.client.room_invite(room_id, user_id), f"invite {user_id} to {room_id}")

    async def kick(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        _check(await self.client.room_kick(room_id, user_id, reason), f"kick {user_id}")

    async def joined_rooms(self) -> set[str]:
        """Asked from the server: nio keeps a room in client.rooms after a kick."""
        response = _check(await self.client.joined_rooms(), "joined_rooms")
        assert isinstance(response, JoinedRoomsResponse)
        return set(response.rooms)

    async def create_room(
        self,
        *,
        name: str | None = None,
        invite: tuple[str, ...] | list[str] = (),
        encrypted: bool = True,
        is_direct: bool = False,
        preset: RoomPreset = RoomPreset.private_chat,
        timeout: float = 30,
    ) -> str:
        """An invite-only room (encrypted unless asked otherwise), synced before returning."""
        initial_state = (
            [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}]
            if encrypted
            else []
        )
        response = _check(
            await self.client.room_create(
                visibility=RoomVisibility.private,
                name=name,
                is_direct=is_direct,
                preset=preset,
                invite=list(invite),
                initial_state=initial_state,
            ),
            "room_create",
        )
        assert isinstance(response, RoomCreateResponse)
        room_id: str = response.room_id

        def seen(user: str, room: MatrixRoom) -> bool:
            # Invited, or already past it: an invitee may decline (or join and leave) before
            # this client's sync shows the invite, and is then never in `room.users`.
            return user in room.users or any(
                isinstance(e, RoomMemberEvent) and e.state_key == user
                for e in self.events.get(room_id, [])
            )

        def synced() -> bool | None:
            room = self.client.rooms.get(room_id)
            if room is None or room.encrypted != encrypted:
                return None
            return True if all(seen(user, room) for user in invite) else None

        await self._wait_until(
            synced, timeout, lambda: f"{self.user_id}: created room {room_id} not synced"
        )
        return room_id

    async def create_dm(self, user_id: str) -> str:
        """An encrypted direct chat with user_id, who is invited."""
        return await self.create_room(invite=[user_id], is_direct=True)

    async def _refresh_members(self, room_id: str) -> None:
        """Bring nio's member list up to the server's, invitees included.

        nio learns membership from sync, and its joined_members() refresh leaves invitees
        out; a message sent right after an invite (before the sync that shows it) would be
        encrypted for a session the invitee never receives. Any change here also retires
        the outbound session, as a membership change seen in sync would.
        """
        _check(await self.client.joined_members(room_id), f"joined_members {room_id}")
        response = _check(await self.client.room_get_state(room_id), f"state of {room_id}")
        assert isinstance(response, RoomGetStateResponse)
        room = self.client.rooms[room_id]
        changed = False
        for event in response.events:
            if event.get("type") != "m.room.member":
                continue
            member, content = event["state_key"], event.get("content", {})
            membership = content.get("membership")
            if membership in ("join", "invite"):
                changed |= room.add_member(
                    member,
                    content.get("displayname"),
                    content.get("avatar_url"),
                    invited=membership == "invite",
                )
            elif member in room.users:
                changed |= room.remove_member(member)
        if changed:
            self.client.invalidate_outbound_session(room_id)
        if self.client.olm is not None:
            self.client.olm.update_tracked_users(room)

    async def request_key_from(self, event: MegolmEvent, user_id: str, device_id: str) -> None:
        """Ask one device (the bot's) for the room key of an event this device cannot read,
        as Element asks when it shows "Unable to decrypt"."""
        message = event.as_key_request(user_id, self.device_id, device_id=device_id)
        _check(await self.client.to_device(message), f"key request to {user_id} {device_id}")
        # nio records a request only when it queued it itself: do what it would.
        assert self.client.olm is not None
        self.client.olm.outgoing_key_requests[message.request_id] = OutgoingKeyRequest.from_message(
            message
        )

    def trust_room_devices(self, room_id: str) -> None:
        """Mark every known device of every member as verified (test side only)."""
        room = self.client.rooms[room_id]
        for user_id in list(room.users):
            for device in self.client.device_store.active_user_devices(user_id):
                if device.device_id != self.client.device_id and not (
                    self.client.olm is not None and self.client.olm.is_device_verified(device)
                ):
                    self.client.verify_device(device)  # only on a change: see bot/matrix.py

    async def download_file(self, file: Mapping[str, Any]) -> bytes:
        """An EncryptedFile (an m.image's `file`, or its `info.thumbnail_file`) downloaded
        and decrypted with its key and iv; nio checks the ciphertext's sha256 against the
        file's hash first and raises EncryptionError when they differ."""
        url = str(file["url"])
        response = _check(await self.client.download(mxc=url), f"download of {url}")
        assert isinstance(response, MemoryDownloadResponse), response
        plain: bytes = decrypt_attachment(
            response.body, file["key"]["k"], file["hashes"]["sha256"], file["iv"]
        )
        return plain

    async def download_image(self, event: Event, save_to: Path | None = None) -> bytes:
        """The picture of a decrypted m.image event, decrypted (and written to `save_to`
        if given): what a person's client shows."""
        content = event.source["content"]
        if content.get("msgtype") != "m.image" or "file" not in content:
            raise AssertionError(f"not an encrypted m.image: {_describe(event)}")
        data = await self.download_file(content["file"])
        if save_to is not None:
            save_to.write_bytes(data)
        return data

    async def send_text(
        self,
        room_id: str,
        body: str,
        *,
        msgtype: str = "m.text",
        formatted_body: str | None = None,
        mentions: dict[str, Any] | None = None,
    ) -> str:
        """Send a message, encrypting for every current device of every member."""
        content: dict[str, Any] = {"msgtype": msgtype, "body": body}
        if formatted_body is not None:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = formatted_body
        if mentions is not None:
            content["m.mentions"] = mentions
        return await self.send_event(room_id, "m.room.message", content)

    async def send_event(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        room = await self.wait_for_room(room_id)
        for attempt in range(3):
            if room.encrypted:
                # Fresh member list and device keys, so new members and devices get the key.
                await self._refresh_members(room_id)
                await self._maintain_keys()
                self.trust_room_devices(room_id)
            try:
                response = await self.client.room_send(room_id, event_type, content)
            except OlmUnverifiedDeviceError:
                # A device appeared between the trust pass and the send (the sync loop ran a
                # key query meanwhile); trust again.
                if attempt == 2:
                    raise
                continue
            _check(response, f"send to {room_id}")
            assert isinstance(response, RoomSendResponse)
            event_id: str = response.event_id
            return event_id
        raise AssertionError("unreachable")


def _accept_forwards_from_session_creators(client: AsyncClient) -> None:
    """Accept a requested `m.forwarded_room_key` from the device that created the session
    (its Olm key is the session's sender key and nothing forwarded it before): that is the
    same key the creator would share, from a later index. nio by itself accepts forwards
    from its own user's devices only."""
    olm = client.olm
    assert olm is not None
    own_rule = olm._should_accept_forward

    def accept(sender: str, sender_key: str, event: Any) -> bool:
        if own_rule(sender, sender_key, event):
            return True
        content = event.source.get("content", {})
        device = olm.device_store.device_from_sender_key(sender, sender_key)
        return bool(
            event.session_id in olm.outgoing_key_requests
            and content.get("sender_key") == sender_key
            and not content.get("forwarding_curve25519_key_chain")
            and device is not None  # a device this client has seen; it trusts them all
        )

    olm._should_accept_forward = accept


def _check(response: T, what: str) -> T:
    """Turn a nio error response into a test failure that says what was attempted."""
    if isinstance(response, ErrorResponse):
        raise AssertionError(f"{what} failed: {response}")
    return response


def _describe(event: Event) -> str:
    kind = type(event).__name__
    sender = getattr(event, "sender", "?")
    if isinstance(event, (RoomMessageText, RoomMessageNotice)):
        return f"{kind} from {sender}: {event.body!r}"
    if isinstance(event, MegolmEvent):
        return f"{kind} (undecrypted) from {sender} session {event.session_id}"
    source = getattr(event, "source", {}) or {}
    detail = source.get("content", {})
    state_key = source.get("state_key")
    target = f" [{state_key}]" if state_key else ""
    return f"{kind} {source.get('type', '')}{target} from {sender}: {str(detail)[:120]}"


# -- fixtures ------------------------------------------------------------------------------


async def cross_sign(
    server: DevServer,
    client: E2EEClient,
    identities: dict[str, CrossSigningKeys],
    *,
    reset: bool = False,
) -> CrossSigningKeys:
    """Do what Element does for a user: set up cross-signing once (or reset it, which needs
    the password), and sign this client's device with the self-signing key."""
    from bot.matrix.crosssign import check_identity
    from bot.matrix.trust import AuthRequired, KeysAPI

    user_id = client.user_id
    api = KeysAPI(server.base_url, str(client.client.access_token))
    try:
        keys = identities.get(user_id)
        if keys is None or reset:
            keys = CrossSigningKeys.generate(user_id)
            body = keys.upload_body()
            try:
                await api.upload_cross_signing(body)
            except AuthRequired as exc:
                auth = {
                    "type": "m.login.password",
                    "password": client.user.password,
                    "session": exc.session,
                    "identifier": {"type": "m.id.user", "user": user_id},
                }
                await api.upload_cross_signing({**body, "auth": auth})
            identities[user_id] = keys
        query = await api.query([user_id])
        device = query["device_keys"][user_id][client.device_id]
        result = await api.upload_signatures(
            {user_id: {client.device_id: keys.sign_device(device)}}
        )
        assert not result.get("failures"), result
        assert (
            client.device_id in check_identity(user_id, await api.query([user_id])).signed_devices
        )
    finally:
        await api.close()
    return keys


async def open_dm(client: E2EEClient, bot_user_id: str, timeout: float = 30) -> str:
    """An encrypted DM with the bot, once the bot has joined it."""
    room_id = await client.create_dm(bot_user_id)
    await client.wait_for(
        room_id,
        lambda e: (
            isinstance(e, RoomMemberEvent) and e.state_key == bot_user_id and e.membership == "join"
        ),
        timeout,
    )
    return room_id


async def talk(
    client: E2EEClient, room_id: str, text: str, expect: str, timeout: float = 30
) -> RoomMessageNotice:
    """Send a command; the bot's notice in the same room that contains `expect`."""
    mark = client.event_count(room_id)
    await client.send_text(room_id, text)
    event = await client.wait_for(
        room_id,
        lambda e: isinstance(e, RoomMessageNotice) and expect in e.body,
        timeout,
        after=mark,
    )
    assert isinstance(event, RoomMessageNotice)
    return event
