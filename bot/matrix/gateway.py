"""The edge to the homeserver: nio's `…Response | …Error` results become values or typed
exceptions here, once (mautrix's `make_request_error`), so the rest of the bot never checks
response types. Room keys are shared from here, and only with the users the caller names.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import uuid4

from nio import (
    AsyncClient,
    ErrorResponse,
    JoinedRoomsResponse,
    MatrixRoom,
    MegolmEvent,
    RoomContextResponse,
    RoomCreateResponse,
    RoomGetEventResponse,
    RoomGetStateResponse,
    RoomMemberEvent,
    RoomMessagesResponse,
    RoomSendResponse,
    ShareGroupSessionResponse,
    ToDeviceMessage,
    ToDeviceResponse,
    UploadResponse,
)
from nio.api import Api, MessageDirection, RoomPreset, RoomVisibility
from nio.crypto import InboundGroupSession, OlmDevice

from bot.matrix.cryptostore import CryptoClient
from bot.services.ports import HomeserverError, StateEvent
from bot.wire import MEGOLM
from policy.ids import UserId

log = logging.getLogger(__name__)

T = TypeVar("T")

Client = AsyncClient  # for tools and tests that reach past the gateway (the bot does not)

# Who may receive this room's key, and is this particular device trusted.
DevicePolicy = Callable[[str, OlmDevice], bool]


class MatrixError(HomeserverError):
    """The homeserver said no, as nio reported it: the services' port error, raised here."""


def check(response: Any, what: str) -> None:
    """Raise MatrixError when the homeserver refused; for calls whose answer we ignore."""
    if isinstance(response, ErrorResponse):
        raise _error(response, what)


def unwrap(response: Any, expected: type[T], what: str) -> T:
    """The response when it is what we asked for; MatrixError otherwise."""
    if isinstance(response, expected):
        return response
    if isinstance(response, ErrorResponse):
        raise _error(response, what)
    raise MatrixError(what, None, f"unexpected response {type(response).__name__}", None)


def _membership(room: MatrixRoom) -> frozenset[tuple[str, bool]]:
    """Who is in the room as nio has it (user, invited only): to see a sync change it."""
    return frozenset((u, bool(m.invited)) for u, m in room.users.items())


def _error(response: Any, what: str) -> MatrixError:
    transport = getattr(response, "transport_response", None)
    return MatrixError(
        what,
        getattr(response, "status_code", None),
        getattr(response, "message", "") or str(response),
        getattr(transport, "status", None),
    )


@dataclass(frozen=True)
class SentIndex:
    """One event the bot encrypted: which megolm message index it used. `event_id` is None
    when the homeserver's answer never came (the event may exist or not)."""

    index: int
    event_id: str | None
    excluded: frozenset[str] = frozenset()  # members the bot left out of this key on purpose


# Sessions whose sent events are remembered for answering key requests; nio rotates a session
# after 100 messages or 7 days, so this covers many rooms' current and recent sessions.
REMEMBERED_SESSIONS = 2000
REMEMBERED_CIPHERTEXTS = 20_000


class Gateway:
    """The operations the bot performs on the homeserver, each one call with typed errors."""

    def __init__(
        self, client: AsyncClient, reopen: Callable[[CryptoClient], CryptoClient] | None = None
    ) -> None:
        self.client = client
        self._reopen = reopen  # the same login on a client loaded afresh from the store
        self._send_locks: dict[str, asyncio.Lock] = {}
        self._restored: set[str] = set()  # rooms from snapshots, members not yet checked
        # Rooms whose member list may have changed unseen (an invite the bot just sent, a DM
        # it just created): asked from the server before the next encryption into them.
        self._stale_members: set[str] = set()
        # (room id, session id) -> the events the bot sent with that outbound session.
        self._sent: OrderedDict[tuple[str, str], list[SentIndex]] = OrderedDict()
        # event id -> "sender key|session id|message index" of the message it decrypted from
        self._ciphertexts: OrderedDict[str, str] = OrderedDict()
        self._watch_message_indexes()

    def _watch_message_indexes(self) -> None:
        """Note which megolm message each event decrypted from. nio checks replays only
        against an in-memory cache, emptied by a restart; the bot keeps what it acted on
        (`ciphertext_of`), so the same message under a new event id is recognised.

        That record is the one judge of a replay: nio's verdict is not used. When nio's cache
        caught a replay (the original seen by this process: no restart in between, or a
        restart that synced the original again), nio left the event undecrypted, and the
        bot told the sender its room key had never arrived and alerted nobody. Decrypted,
        the replay of a message the bot acted on is refused as such (audited
        `replay.refused`, admins alerted); one of a message it did not act on is not acted
        on either."""
        olm = self.client.olm
        if olm is None:
            return
        check = olm.message_index_ok

        def noted(message_index: int, event: MegolmEvent) -> bool:
            self._ciphertexts[event.event_id] = (
                f"{event.sender_key}|{event.session_id}|{message_index}"
            )
            self._ciphertexts.move_to_end(event.event_id)
            while len(self._ciphertexts) > REMEMBERED_CIPHERTEXTS:
                self._ciphertexts.popitem(last=False)
            check(message_index, event)  # nio's own note of the index; its verdict aside
            return True

        olm.message_index_ok = noted

    async def reload(self) -> None:
        """Replace the client by one loaded afresh from the crypto store (nio failed in the
        middle of a sync, so what it holds in memory may be ahead of its store). The rooms
        go with the old client: the caller restores them (`SyncLoop`). Sends in progress
        finish first; a send meanwhile finds the room not synced yet and fails as such."""
        if self._reopen is None:
            raise RuntimeError("this gateway cannot reload its client")
        locks = list(self._send_locks.values())
        for lock in locks:
            await lock.acquire()
        try:
            old = self.client
            await old.close()
            old.close_store()
            self.client = self._reopen(old)
            self._restored.clear()
            self._watch_message_indexes()
        finally:
            for lock in locks:
                lock.release()

    async def close(self) -> None:
        """Close the HTTP session and the crypto store of the current client."""
        await self.client.close()
        close_store = getattr(self.client, "close_store", None)
        if close_store is not None:
            close_store()

    def ciphertext_of(self, event_id: str) -> str | None:
        """The megolm message (sender key, session, index) a decrypted event came from;
        None for an event that was not decrypted here (in clear, or long ago)."""
        return self._ciphertexts.get(event_id)

    @property
    def user_id(self) -> UserId:
        return UserId(str(self.client.user_id))

    def room(self, room_id: str) -> MatrixRoom | None:
        return self.client.rooms.get(room_id)

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    def members(self, room_id: str) -> dict[UserId, bool] | None:
        """Members as the last sync showed them, user -> joined (False: invited only);
        None for a room the bot has not synced."""
        room = self.client.rooms.get(room_id)
        if room is None:
            return None
        return {UserId(u): not member.invited for u, member in room.users.items()}

    def is_joined(self, room_id: str, user_id: str) -> bool:
        """Joined (not merely invited), as the last sync showed."""
        return bool((self.members(room_id) or {}).get(UserId(user_id)))

    def is_encrypted(self, room_id: str) -> bool | None:
        """Whether the room has encryption on; None for a room the bot has not synced."""
        room = self.client.rooms.get(room_id)
        return None if room is None else bool(room.encrypted)

    # ------------------------------------------------------------ room snapshots

    def snapshot(self, room_id: str) -> dict[str, Any] | None:
        """What a restart needs of a joined room to act at once: its encryption and who is
        in it (joined, or invited only). None for a room not synced."""
        room = self.client.rooms.get(room_id)
        if room is None:
            return None
        return {
            "v": 1,
            "encrypted": bool(room.encrypted),
            "members": {u: 0 if m.invited else 1 for u, m in room.users.items()},
        }

    async def snapshot_from_server(self, room_id: str) -> dict[str, Any]:
        """A room's snapshot read from its current state on the server (a room the bot is
        in that has no stored snapshot)."""
        state = await self.state(room_id)
        return {
            "v": 1,
            "encrypted": ("m.room.encryption", "") in state,
            "members": {
                key: 1 if event.content.get("membership") == "join" else 0
                for (kind, key), event in state.items()
                if kind == "m.room.member" and event.content.get("membership") in ("join", "invite")
            },
        }

    def joined_room_ids(self) -> list[str]:
        """The rooms nio holds: after a full sync, those the bot is in (nio keeps a room it
        left, so this is asked only then)."""
        return list(self.client.rooms)

    def restore(self, snapshots: Mapping[str, Mapping[str, Any]]) -> None:
        """Rooms as stored with the sync token, so that a sync from that token (only what
        changed since) leaves them as a full sync would. Their member lists are checked with
        the server before a room key is next shared (`ensure_current_members`)."""
        client = self.client
        for room_id, snap in snapshots.items():
            # Encryption cannot be switched off: nio's own record counts too.
            encrypted = bool(snap["encrypted"]) or room_id in client.encrypted_rooms
            room = MatrixRoom(room_id, client.user_id, encrypted)
            for user_id, joined in snap["members"].items():
                room.add_member(user_id, None, None, invited=not joined)
            room.members_synced = False
            self._restored.add(room_id)
            client.rooms[room_id] = room
            if room.encrypted:
                client.encrypted_rooms.add(room_id)
                if client.olm is not None:
                    client.olm.update_tracked_users(room)

    async def check_restored_members(self) -> None:
        """After a restart from snapshots: every restored room's members checked with the
        server, a few rooms at a time, so that a snapshot older than the token (a database
        restored in part) leaves nobody behind who has left."""
        limit = asyncio.Semaphore(8)

        async def check(room_id: str) -> None:
            async with limit:
                try:
                    await self.ensure_current_members(room_id)
                except MatrixError as exc:
                    log.warning("members of %s not checked: %s", room_id, exc)

        await asyncio.gather(*(check(r) for r in list(self._restored)))

    async def after_sync(self) -> None:
        """What nio's sync_forever does between syncs: keys and to-device messages."""
        client = self.client
        await client.send_to_device_messages()
        if client.should_upload_keys:
            await client.keys_upload()
        if client.should_query_keys:
            await client.keys_query()
        if client.should_claim_keys:
            await client.keys_claim(client.get_users_for_key_claiming())

    async def query_keys_if_due(self) -> None:
        """Fetch device keys nio knows to be outdated (a new device of a member)."""
        if self.client.should_query_keys:
            await self.client.keys_query()

    async def request_room_key(self, event: MegolmEvent) -> None:
        """Ask the sender's devices for the key of an event the bot could not decrypt."""
        await self.client.request_room_key(event)

    def decrypt(self, event: MegolmEvent) -> Any | None:
        """The decrypted event, or None while its key is still missing."""
        try:
            decrypted = self.client.decrypt_event(event)
        except Exception:  # nio raises EncryptionError and others for a missing key
            return None
        return None if isinstance(decrypted, MegolmEvent) else decrypted

    # ------------------------------------------------------------ rooms

    async def create_room(
        self,
        *,
        name: str | None,
        topic: str | None,
        initial_state: Sequence[Mapping[str, Any]],
        power_levels: Mapping[str, Any] | None = None,
        invite: Sequence[str] = (),
        is_direct: bool = False,
    ) -> str:
        response = await self.client.room_create(
            visibility=RoomVisibility.private,
            name=name,
            topic=topic,
            preset=RoomPreset.trusted_private_chat if is_direct else RoomPreset.private_chat,
            is_direct=is_direct,
            invite=list(invite),
            initial_state=[dict(e) for e in initial_state],
            power_level_override=dict(power_levels) if power_levels else None,
        )
        return str(unwrap(response, RoomCreateResponse, "create room").room_id)

    async def state(self, room_id: str) -> dict[tuple[str, str], StateEvent]:
        response = unwrap(
            await self.client.room_get_state(room_id), RoomGetStateResponse, f"state of {room_id}"
        )
        out: dict[tuple[str, str], StateEvent] = {}
        for event in response.events:
            key = (event["type"], event.get("state_key", ""))
            out[key] = StateEvent(key[0], key[1], event.get("content", {}), event.get("sender", ""))
        return out

    async def put_state(
        self, room_id: str, event_type: str, content: Mapping[str, Any], state_key: str = ""
    ) -> None:
        response = await self.client.room_put_state(room_id, event_type, dict(content), state_key)
        check(response, f"set {event_type} in {room_id}")

    async def joined_rooms(self) -> set[str]:
        response = unwrap(await self.client.joined_rooms(), JoinedRoomsResponse, "joined rooms")
        return set(response.rooms)

    async def join(self, room_id: str) -> None:
        response = await self.client.join(room_id)
        check(response, f"join {room_id}")

    async def leave(self, room_id: str) -> None:
        response = await self.client.room_leave(room_id)
        check(response, f"leave {room_id}")

    async def invite(self, room_id: str, user_id: str) -> None:
        response = await self.client.room_invite(room_id, user_id)
        check(response, f"invite {user_id} to {room_id}")
        # The invitee may join before the sync that shows the invite: ask before encrypting.
        self.mark_members_stale(room_id)

    def mark_members_stale(self, room_id: str) -> None:
        """The room's members may change before a sync shows it (the bot invited someone,
        created a DM): the next encryption into it asks the server first."""
        self._stale_members.add(room_id)

    async def ensure_current_members(self, room_id: str) -> None:
        """Bring the local member list up to the server's when it may be behind, so that a
        member who joined before the bot's sync showed it still gets the room key.

        Only the bot invites to the rooms it runs, and nobody joins uninvited, so the list
        can be behind only while an invite is outstanding (ours, just sent, or one the last
        sync showed) or before the first full member list: asked then, not on every send.
        """
        room = self.client.rooms.get(room_id)
        if room is None or not room.encrypted:
            return
        restored = room_id in self._restored
        if (
            room.members_synced
            and not room.invited_users
            and room_id not in self._stale_members
            and not restored
        ):
            return
        for _ in range(3):
            # A sync handled while the answer travels may have changed the room's members
            # (a join or a leave it showed would be undone): ask again then.
            before = _membership(room)
            joined = await self._joined_member_ids(room_id)
            if self.client.rooms.get(room_id) is room and _membership(room) == before:
                break
        else:
            # Still unconfirmed: a restored list stays marked, and no room key is shared
            # with it (`_ensure_room_key`) until an answer holds.
            log.warning("members of %s not confirmed: syncs kept changing them", room_id)
            return
        self._stale_members.discard(room_id)
        if restored:
            # The list came from a stored snapshot, not from sync: the server's answer (no
            # newer sync came meanwhile) is the truth, removals included. Invitees stay.
            self._restored.discard(room_id)
            for user_id in [u for u, m in room.users.items() if not m.invited]:
                if user_id not in joined:
                    log.warning("%s not in %s although its snapshot said so", user_id, room_id)
                    room.remove_member(user_id)
        # Only additions: a member who joined unseen, an invitee who has since joined. Leaves
        # come from sync, in order (nio's own joined_members handling would also drop members
        # from a snapshot older than the last sync).
        for user_id, profile in joined.items():
            if user_id not in room.users:
                room.add_member(user_id, profile.get("display_name"), profile.get("avatar_url"))
            elif room.users[user_id].invited:
                room.users[user_id].invited = False
                room.invited_users.pop(user_id, None)
        room.members_synced = True
        olm = self.client.olm
        if olm is not None:
            olm.update_tracked_users(room)

    def members_confirmed(self, room_id: str) -> bool:
        """False for a room whose member list came from a stored snapshot and has not yet
        been checked with the server: no room key is shared with such a list."""
        return room_id not in self._restored

    async def _joined_member_ids(self, room_id: str) -> dict[str, dict[str, Any]]:
        """`/joined_members`, read without handing the answer to nio's state handling."""
        method, path = Api.joined_members(str(self.client.access_token), room_id)
        response = await self.client.send(method, path)
        body = await response.json(content_type=None)
        if response.status != 200 or not isinstance(body, dict):
            raise MatrixError(
                f"members of {room_id}",
                body.get("errcode") if isinstance(body, dict) else None,
                str(body.get("error", "")) if isinstance(body, dict) else str(body),
                response.status,
            )
        joined = body.get("joined", {})
        return {str(u): (p if isinstance(p, dict) else {}) for u, p in joined.items()}

    async def kick(self, room_id: str, user_id: str, reason: str) -> None:
        """Reasons are not encrypted: callers keep markings and room names out of them."""
        response = await self.client.room_kick(room_id, user_id, reason)
        check(response, f"remove {user_id} from {room_id}")

    async def upload(self, data: bytes, content_type: str, filename: str) -> str:
        """Put bytes (already encrypted by the caller) in the media repository: their mxc URI."""
        response, _ = await self.client.upload(
            io.BytesIO(data), content_type=content_type, filename=filename, filesize=len(data)
        )
        return str(unwrap(response, UploadResponse, "media upload").content_uri)

    async def redact(self, room_id: str, event_id: str, reason: str, tx_id: str) -> None:
        """Reasons are not encrypted: callers keep markings and room names out of them.
        `tx_id` is fixed by the redaction's cause (nio would make a random one)."""
        response = await self.client.room_redact(room_id, event_id, reason, tx_id=tx_id)
        check(response, f"redact {event_id} in {room_id}")

    async def messages_between(self, room_id: str, start: str, end: str | None) -> list[Any]:
        """Events from `start` back to `end` (a sync gap), oldest first, decrypted by nio."""
        events: list[Any] = []
        token: str | None = start
        for _ in range(50):  # at most 5000 events of one gap; the rest is logged
            response = unwrap(
                await self.client.room_messages(
                    room_id, start=token, end=end, direction=MessageDirection.back, limit=100
                ),
                RoomMessagesResponse,
                f"history of {room_id}",
            )
            events.extend(response.chunk)
            if not response.chunk or not response.end or response.end == token:
                break
            token = response.end
        else:
            log.warning("gap in %s longer than 5000 events; older ones skipped", room_id)
        events.reverse()
        return events

    # ------------------------------------------------------------ sending

    def _lock(self, room_id: str) -> asyncio.Lock:
        """One send at a time per room: nio fails when two sends share a room key at once."""
        return self._send_locks.setdefault(room_id, asyncio.Lock())

    async def send(
        self,
        room_id: str,
        content: Mapping[str, Any],
        *,
        recipients: Callable[[], Iterable[str]],
        device_trusted: DevicePolicy,
        event_type: str = "m.room.message",
        tx_id: str | None = None,
        also_to: Sequence[OlmDevice] = (),
    ) -> str:
        """Send an event; in an encrypted room the room key goes only to those of
        `recipients()` (asked at sharing time) who have joined, and of their devices only to
        those `device_trusted` accepts. Every other device is blacklisted, never ignored, so
        nio never shares with it.

        `also_to` names devices that must read this one event although the policy excludes
        them (telling an unverified device why it was refused): the event gets a one-off
        room key, and the room's next event a fresh one.
        """
        async with self._lock(room_id):
            room = self.client.rooms.get(room_id)
            if room is None:
                raise MatrixError(f"send to {room_id}", "M_NOT_JOINED", "room not synced yet", None)
            if not room.encrypted:
                # Nothing but a room's own state goes to a room without encryption: a
                # message there would be readable by the homeserver and anyone it lets in.
                raise MatrixError(f"send to {room_id}", None, "refused: room not encrypted", None)
            olm = self.client.olm
            excluded: frozenset[str] = frozenset()
            if room.encrypted:
                if also_to:
                    self.client.invalidate_outbound_session(room_id)
                entitled = list(recipients())
                # Joined members not entitled now: a key request of theirs for this message
                # must not be answered later, when they may be entitled again.
                excluded = frozenset(
                    u
                    for u, member in room.users.items()
                    if not member.invited and u != self.user_id and u not in entitled
                )
                if not self.members_confirmed(room_id):
                    await self.ensure_current_members(room_id)
                await self._ensure_room_key(room, entitled, device_trusted, also_to)
                if olm is None or olm.should_share_group_session(room_id):
                    # nio would now share the key with every member itself: never let it.
                    raise MatrixError(f"send to {room_id}", None, "room key not ready", None)
            session = olm.outbound_group_sessions.get(room_id) if room.encrypted and olm else None
            index = session.message_index if session is not None else None
            event_id: str | None = None
            try:
                # Random only for a send no event causes (a periodic or start-up alert, a
                # feed's post): everything event handling sends passes an id fixed by its
                # cause (`bot.wire.txn_id`), so a replay or a standby yields one event.
                response = await self.client.room_send(
                    room_id, event_type, dict(content), tx_id=tx_id or str(uuid4())
                )
                if isinstance(response, RoomSendResponse):
                    event_id = str(response.event_id)
            finally:
                if session is not None and index is not None and session.message_index > index:
                    self._remember(room_id, session.id, SentIndex(index, event_id, excluded))
                if room.encrypted and also_to:
                    self.client.invalidate_outbound_session(room_id)
                    olm_ = self.client.olm
                    for device in also_to:  # back to what the policy says
                        if not device_trusted(device.user_id, device) and olm_ is not None:
                            if olm_.is_device_verified(device):
                                self.client.unverify_device(device)
                            if not olm_.is_device_blacklisted(device):
                                self.client.blacklist_device(device)
            return str(unwrap(response, RoomSendResponse, f"send to {room_id}").event_id)

    def _remember(self, room_id: str, session_id: str, sent: SentIndex) -> None:
        key = (room_id, session_id)
        self._sent.setdefault(key, []).append(sent)
        self._sent.move_to_end(key)
        while len(self._sent) > REMEMBERED_SESSIONS:
            self._sent.popitem(last=False)

    def sent_with(self, room_id: str, session_id: str) -> list[SentIndex]:
        """The events the bot sent with one of its outbound sessions, oldest first (empty
        for a session it does not remember: made before a restart, or long ago)."""
        return list(self._sent.get((room_id, session_id), ()))

    def sender_device(self, room_id: str, event: Any) -> OlmDevice | None:
        """The device that sent a decrypted event: the one whose curve25519 key set up the
        room key, with the ed25519 key that session claims; never a forwarded key."""
        olm = self.client.olm
        sender_key = getattr(event, "sender_key", None)
        session_id = getattr(event, "session_id", None)
        if olm is None or not sender_key or not session_id:
            return None
        session = olm.inbound_group_store.get(room_id, sender_key, session_id)
        if session is None or session.forwarding_chain:
            return None
        for device in olm.device_store.active_user_devices(event.sender):
            if device.curve25519 == sender_key and device.ed25519 == session.ed25519:
                return device
        return None

    def own_identity_keys(self) -> dict[str, str]:
        """This device's ed25519 and curve25519 keys, from its own account."""
        olm = self.client.olm
        return dict(olm.account.identity_keys) if olm is not None else {}

    @property
    def own_sender_key(self) -> str | None:
        """This device's curve25519 key: the `sender_key` of every session it created."""
        olm = self.client.olm
        return olm.account.identity_keys["curve25519"] if olm is not None else None

    def own_inbound_session(self, room_id: str, session_id: str) -> InboundGroupSession | None:
        """The bot's own copy of a megolm session it created for the room, if it has one."""
        olm, sender_key = self.client.olm, self.own_sender_key
        if olm is None or sender_key is None:
            return None
        session = olm.inbound_group_store.get(room_id, sender_key, session_id)
        return session if session is not None and not session.forwarding_chain else None

    async def current_device(self, user_id: str, device_id: str) -> OlmDevice | None:
        """A device as its owner's published keys show it now: asked from the server, since
        a device that has just been added may not have reached the bot's sync yet."""
        olm = self.client.olm
        if olm is None:
            return None
        olm.add_changed_users({user_id})
        check(await self.client.keys_query(), f"keys of {user_id}")
        return self.device_by_id(user_id, device_id)

    async def membership_at(self, room_id: str, event_id: str, user_id: str) -> str | None:
        """The user's membership in the room's state at an event ("join", "invite", "leave",
        …), as the homeserver computes it: what history visibility is judged by."""
        # limit=0: the state at the event itself, not after the events that follow it
        # (nio's room_context drops a zero limit, and the server's default is 10).
        method, path = Api.room_context(str(self.client.access_token), room_id, event_id)
        response = unwrap(
            await self.client._send(
                RoomContextResponse, method, f"{path}&limit=0", response_data=(room_id,)
            ),
            RoomContextResponse,
            f"context of {event_id}",
        )
        for event in response.state:
            if isinstance(event, RoomMemberEvent) and event.state_key == user_id:
                return str(event.membership)
        return None

    async def event_sender(self, room_id: str, event_id: str) -> str | None:
        """Who sent an event of the room, as the homeserver has it; None when it does not
        show the event to the bot (unknown, or not visible). The sender is outside the
        encryption, so no key is needed."""
        response = await self.client.room_get_event(room_id, event_id)
        if isinstance(response, RoomGetEventResponse):
            sender = getattr(response.event, "sender", None)
            return sender if isinstance(sender, str) else None
        error = _error(response, f"event {event_id}")
        if error.status is not None and 400 <= error.status < 500 and error.status != 429:
            return None  # not shown to the bot, whatever the reason: not theirs to edit
        raise error

    async def forward_room_key(
        self, device: OlmDevice, room_id: str, session: InboundGroupSession, first_index: int
    ) -> None:
        """Send one device a session of the bot's, readable from `first_index` on only
        (`m.forwarded_room_key`, Olm-encrypted to that device)."""
        client, olm = self.client, self.client.olm
        assert olm is not None
        if olm.session_store.get(device.curve25519) is None:
            await client.keys_claim({device.user_id: [device.id]})
        olm_session = olm.session_store.get(device.curve25519)
        if olm_session is None:
            raise MatrixError(
                f"forward a room key to {device.user_id} {device.id}",
                None,
                "no Olm session with that device (it has no one-time keys left)",
                None,
            )
        content = {
            "algorithm": MEGOLM,
            "room_id": room_id,
            "sender_key": session.sender_key,
            "sender_claimed_ed25519_key": session.ed25519,
            "session_id": session.id,
            "session_key": session.export_session(first_index),
            "forwarding_curve25519_key_chain": [],
        }
        encrypted = olm._olm_encrypt(  # nio forwards keys only to our own devices itself
            olm_session, device, "m.forwarded_room_key", content
        )
        message = ToDeviceMessage("m.room.encrypted", device.user_id, device.id, encrypted)
        current = olm.outbound_group_sessions.get(room_id)
        if current is not None and current.id == session.id:
            # It now holds the room's current key: if it may no longer read, that key is
            # rotated like any other holder's (_ensure_room_key).
            current.users_shared_with.add((device.user_id, device.id))
        unwrap(  # nio picks a random transaction id: fresh Olm ciphertext, as in _share
            await client.to_device(message),
            ToDeviceResponse,
            f"forward a room key to {device.user_id} {device.id}",
        )

    async def joined_now(self, room_id: str, user_id: str) -> bool:
        """Joined to the room as the homeserver has it now."""
        return user_id in await self._joined_member_ids(room_id)

    def device_by_id(self, user_id: str, device_id: str) -> OlmDevice | None:
        olm = self.client.olm
        if olm is None:
            return None
        for device in olm.device_store.active_user_devices(user_id):
            if device.id == device_id:
                return device
        return None

    async def _ensure_room_key(
        self,
        room: MatrixRoom,
        users: list[str],
        device_trusted: DevicePolicy,
        also_to: Sequence[OlmDevice] = (),
    ) -> None:
        client, olm = self.client, self.client.olm
        assert olm is not None
        if client.should_query_keys:
            await client.keys_query()
        allowed = [u for u in users if u != client.user_id]
        # History is visible from joining: only joined members get the key. Invitees' devices
        # are judged now all the same, so that the change of mark, which makes nio drop the
        # room's key, happens before their join and not after it.
        readers = [u for u in allowed if u in room.users and not room.users[u].invited]
        may_read: set[tuple[str, str]] = set()
        for user_id in allowed:
            for device in olm.device_store.active_user_devices(user_id):
                # Only on a change: nio 0.26 reports every verify/blacklist as a change, which
                # drops the room's key (a new share per event) and grows its trust file.
                if device_trusted(user_id, device):
                    if olm.is_device_blacklisted(device):
                        client.unblacklist_device(device)
                    if not olm.is_device_verified(device):
                        client.verify_device(device)
                    if user_id in readers:
                        may_read.add((user_id, device.id))
                else:
                    if olm.is_device_verified(device):
                        client.unverify_device(device)
                    if not olm.is_device_blacklisted(device):
                        client.blacklist_device(device)
        extra_ids = {(d.user_id, d.id) for d in also_to}
        for user_id in {d.user_id for d in also_to} - set(allowed):
            for device in olm.device_store.active_user_devices(user_id):
                if (user_id, device.id) not in extra_ids and not olm.is_device_blacklisted(device):
                    client.blacklist_device(device)
        for device in also_to:
            if olm.is_device_blacklisted(device):
                client.unblacklist_device(device)
            if not olm.is_device_verified(device):
                client.verify_device(device)
        current = olm.outbound_group_sessions.get(room.room_id)
        if current is not None and set(current.users_shared_with) - may_read:
            # Someone who holds the current key (or got part of a share that failed) may no
            # longer read: drop it, shared or not (nio's invalidate keeps an unshared one).
            olm.outbound_group_sessions.pop(room.room_id, None)
            current = None
        if current is not None and current.shared and not current.expired:
            holders = current.users_shared_with | current.users_ignored
            if not (may_read | extra_ids) - holders:
                return
            # Devices that may read lack this key (a member who joined since it went out,
            # a new device): nio shares an unshared session only with the devices that do
            # not hold it yet, from its current index on, so they read from now, not before.
            current.shared = False
        elif not olm.should_share_group_session(room.room_id):
            return
        if not self.members_confirmed(room.room_id):
            # The list is as a stored snapshot had it: someone in it may have left.
            raise MatrixError(
                f"share room key of {room.room_id}",
                None,
                "refused: member list not confirmed with the server",
                None,
            )
        targets = sorted(set(readers) | {d.user_id for d in also_to})
        try:
            await self._share(room, targets)
        except BaseException:
            # Half shared, in an unknown state: never encrypt with it; the next send makes a
            # new one (an old one reused after `shared = False` would skip the rotation).
            olm.outbound_group_sessions.pop(room.room_id, None)
            raise
        olm.outbound_group_sessions[room.room_id].shared = True

    async def _share(self, room: MatrixRoom, targets: list[str]) -> None:
        client, olm = self.client, self.client.olm
        assert olm is not None
        missing = olm.get_missing_sessions(targets)
        if missing:
            await client.keys_claim(missing)
        for sharing_with, to_device in olm.share_group_session_parallel(room.room_id, targets):
            # A random id on purpose: each share is new Olm ciphertext of this process's
            # session; a fixed id would make the homeserver drop a standby's share as the
            # active's and leave the readers without the key the standby encrypts with.
            method, path, data = Api.to_device(
                client.access_token, "m.room.encrypted", to_device, uuid4()
            )
            token = client.access_token
            response = await client._send(  # nio has no public call for a chosen user list
                ShareGroupSessionResponse,
                method,
                path,
                data,
                response_data=(room.room_id, sharing_with),
            )
            if isinstance(response, ErrorResponse):
                if not client.access_token and not isinstance(response.soft_logout, bool):
                    # nio 0.26 builds ShareGroupSessionError with the user set in its
                    # soft_logout field, and then "logs out" on any failed share: undo that.
                    client.access_token = token
                unwrap(response, ShareGroupSessionResponse, f"share room key of {room.room_id}")
