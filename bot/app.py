"""The running bot: one device for life, the sync loop, rooms, membership, commands.

Guarantees kept here (DESIGN §7, §7a):
- the sync token is stored only after every event it covers was handled; a gap in a
  `limited` timeline is back-filled first; the first sync after start asks for full state;
- homeserver errors back off exponentially with a cap, never a tight loop;
- room keys go only to devices of members who pass `may_join` (of the DM partner in a DM);
- a command event is acted on once, even when a crash replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from nio import (
    AsyncClient,
    AsyncClientConfig,
    InviteMemberEvent,
    LoginResponse,
    MegolmEvent,
    RedactionEvent,
    RoomMemberEvent,
    RoomMessageText,
    SyncError,
    SyncResponse,
    WhoamiResponse,
)
from nio.crypto import OlmDevice

from bot.config import Config
from bot.matrix.crosssign import normalise_fingerprint
from bot.matrix.gateway import MEGOLM, Gateway, MatrixError, unwrap
from bot.matrix.keyshare import KeyRequests
from bot.matrix.trust import DeviceTrust, KeysAPI, bootstrap_cross_signing, key_sealer
from bot.metrics import Metrics, serve
from bot.services.digest import DigestService, describe
from bot.services.register import ClearanceRegister, RegisterError, policy_clearance
from bot.services.relay import RelayEngine, Source
from bot.services.rooms import ManagedRoom, ProvisionError, provision
from bot.services.schedule import cron_trigger, parse_duration
from bot.storage import AuditEntry, AuditVerdict, ClearanceRecord, RoomRecord, Store
from bot.storage.sealing import Sealer
from commands import build_registry
from commands.context import CommandError, Invocation, PermissionDenied, Reply, Role
from commands.dispatch import dispatch, is_command
from commands.document import Code, Document, Mention, doc, para
from commands.services import (
    InviteOutcome,
    RevokeOutcome,
    RoomSummary,
    RouteSummary,
    StatusInfo,
)
from commands.views import fingerprint
from policy import (
    Decision,
    MarkingError,
    is_tagged,
    make_room,
    may_join,
    parse_audience,
    parse_marking,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

SYNC_FILTER = {"room": {"timeline": {"limit": 100}, "state": {"lazy_load_members": False}}}
SYNC_TIMEOUT_MS = 30_000
KICK_REASON = "not cleared for this room"  # not encrypted: no markings, no room names
KEY_REQUEST_BACKLOG = 1000  # room key requests waiting for the one worker; more are dropped


class StartupError(Exception):
    """The bot cannot start; the message says what to fix."""


@dataclass(frozen=True)
class Secrets:
    pickle_key: str
    data_key: str
    password: str | None
    access_token: str | None
    feed_tokens: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, config: Config, environ: dict[str, str] | None = None) -> Secrets:
        env = dict(os.environ if environ is None else environ)
        missing = config.missing_secrets(env)
        if missing:
            raise StartupError("missing secrets, refusing to start: " + "; ".join(missing))
        hs = config.homeserver
        return cls(
            pickle_key=env[hs.pickle_key_env],
            data_key=env[config.storage.data_key_env],
            password=env.get(hs.password_env) if hs.password_env else None,
            access_token=env.get(hs.access_token_env) if hs.access_token_env else None,
            feed_tokens={
                f.key: env[f.token_env] for f in (config.ingest.feeds if config.ingest else ())
            },
        )


class Backoff:
    """Exponential delays with jitter and a cap: 1, 2, 4 … 30 s."""

    def __init__(self, first: float = 1.0, cap: float = 30.0) -> None:
        self.first, self.cap, self.failures = first, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.failures)
        self.failures += 1
        return float(delay * random.uniform(0.8, 1.0))

    def reset(self) -> None:
        self.failures = 0


class LiaisonBot:
    """The bot, and the services its commands use (commands.services.Services)."""

    def __init__(self, config: Config, store: Store, secrets: Secrets) -> None:
        self.config = config
        self.store = store
        self.secrets = secrets
        self.register = ClearanceRegister(store, config.bot.caveats)
        self.registry = build_registry()
        self.rooms_by_key: dict[str, ManagedRoom] = {}
        self.rooms_by_id: dict[str, ManagedRoom] = {}
        self.direct: dict[str, str] = {}  # room id -> partner
        self.chat_routes: list[tuple[str, str]] = []
        self._clearances: dict[str, ClearanceRecord] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._deferred: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        self.synced = asyncio.Event()
        self._sync_done = asyncio.Event()  # replaced after every handled sync (waiters)
        self.started_at = time.monotonic()
        self.last_sync: float | None = None
        self.first_sync_s: float | None = None
        self.client: AsyncClient | None = None
        self.gateway: Gateway | None = None
        self.keys_api: KeysAPI | None = None
        self.trust: DeviceTrust | None = None
        self.key_requests: KeyRequests | None = None
        self._key_request_queue: asyncio.Queue[Any] = asyncio.Queue(KEY_REQUEST_BACKLOG)
        self._pending: dict[str, tuple[str, MegolmEvent, datetime]] = {}
        self.relay = RelayEngine(self, secrets.data_key)
        self.digests = DigestService(self)
        self.metrics = Metrics(self.sync_age)
        self._metrics_runner: Any = None
        self.feeds: Any = None

    # ------------------------------------------------------------ helpers

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Database work runs in a thread: the event loop never blocks on it."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _defer(self, coro: Awaitable[Any]) -> None:
        """Work of the current sync batch that may overlap the next event's handling."""
        self._deferred.append(asyncio.ensure_future(coro))

    async def _flush_deferred(self) -> None:
        tasks, self._deferred = self._deferred, []
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException):
                log.error("a reply of the last sync batch failed", exc_info=result)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def route_targets(self) -> dict[str, list[str]]:
        """Configured routes and those added from chat, source key -> target keys."""
        merged = self.config.route_targets()
        for source, target in self.chat_routes:
            targets = merged.setdefault(source, [])
            if target not in targets:
                targets.append(target)
        return merged

    def sync_age(self) -> float | None:
        return None if self.last_sync is None else time.monotonic() - self.last_sync

    @property
    def user_id(self) -> str:
        return self.config.homeserver.user_id

    def _gw(self) -> Gateway:
        assert self.gateway is not None, "not logged in"
        return self.gateway

    async def audit(
        self, actor: str, action: str, subject: str | None, detail: dict[str, Any]
    ) -> None:
        await self._db(self.store.append_audit, actor, action, subject, detail)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Log in (or reuse the device), provision rooms, start syncing and sweeping."""
        if self.config.metrics is not None:
            self._metrics_runner = await serve(self.metrics, self.config.metrics.bind)
        await self._login()
        self.direct = await self._db(self.store.direct_rooms)
        await self._refresh_clearances()
        await self._setup_trust()
        await self._provision_rooms()
        await self._load_pending()
        self._spawn(self._sync_forever(), "sync")
        self._spawn(self._sweep_forever(), "sweep")
        self._spawn(self._pending_forever(), "undecryptable")
        self._spawn(self._key_requests_forever(), "key-requests")
        if self.config.ingest is not None and self.config.ingest.feeds:
            from bot.services.ingest import FeedListener

            self.feeds = FeedListener(
                self, list(self.config.ingest.feeds), self.secrets.feed_tokens
            )
            await self.feeds.start(self.config.ingest.bind)

    async def run(self) -> None:
        await self.start()
        await self._stop.wait()
        await self.close()

    def request_stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        """Stop tasks and the HTTP session. Never logs out: that would delete the device
        and its keys on the server (DESIGN §7a)."""
        self._stop.set()
        self.digests.shutdown()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.keys_api is not None:
            await self.keys_api.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        if self.feeds is not None:
            await self.feeds.stop()
        if self.client is not None:
            await self.client.close()
        log.info("stopped")

    async def _login(self) -> None:
        hs = self.config.homeserver
        store_dir = self.config.crypto_store_path()
        store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(store_dir, 0o700)
        client_config = AsyncClientConfig(
            encryption_enabled=True,
            store_sync_tokens=False,  # our own token, stored after handling (DESIGN §7)
            pickle_key=self.secrets.pickle_key,
            max_timeouts=3,
            backoff_factor=0.5,
            max_timeout_retry_wait_time=10,
            request_timeout=60,
        )
        sealer = Sealer(self.secrets.pickle_key, "access-token")
        session = await self._db(self.store.bot_session)
        if session is not None and session.user_id != hs.user_id:
            raise StartupError(
                f"the database belongs to {session.user_id}, not {hs.user_id}: use its own database"
            )
        device_id = session.device_id if session else ""
        client = AsyncClient(
            hs.url, hs.user_id, device_id=device_id, store_path=str(store_dir), config=client_config
        )
        self.client = client
        self.gateway = Gateway(client)
        if session is not None:
            token = sealer.open_text(session.sealed_token, session.device_id)
            client.restore_login(hs.user_id, session.device_id, token)
            whoami = await client.whoami()
            if isinstance(whoami, WhoamiResponse):
                log.info("reusing device %s", session.device_id)
            elif (
                getattr(whoami, "status_code", None) == "M_UNKNOWN_TOKEN" and self.secrets.password
            ):
                log.warning("stored token rejected; logging in again to device %s", device_id)
                await self._password_login(client, sealer)
            else:
                raise StartupError(f"the homeserver rejected the stored session: {whoami}")
        elif self.secrets.access_token:
            client.access_token = self.secrets.access_token
            whoami = unwrap(await client.whoami(), WhoamiResponse, "whoami")
            if not whoami.device_id:
                raise StartupError("the access token has no device; log in with a password")
            client.restore_login(hs.user_id, whoami.device_id, self.secrets.access_token)
            await self._db(
                self.store.save_bot_session,
                hs.user_id,
                whoami.device_id,
                sealer.seal_text(self.secrets.access_token, whoami.device_id),
            )
        else:
            await self._password_login(client, sealer)
        if client.should_upload_keys:
            await client.keys_upload()

    async def _setup_trust(self) -> None:
        """Cross-sign the bot's device (DESIGN §7a) and set up the device policy."""
        client = self.client
        assert client is not None
        hs = self.config.homeserver
        self.keys_api = KeysAPI(hs.url, str(client.access_token))
        try:
            keys = await bootstrap_cross_signing(
                self.keys_api,
                self.store,
                key_sealer(self.secrets.pickle_key),
                hs.user_id,
                str(client.device_id),
                self.secrets.password,
            )
        except MatrixError as exc:
            raise StartupError(f"cross-signing: {exc.message}") from None
        log.info(
            "cross-signed device %s; master key %s",
            client.device_id,
            fingerprint(keys.master.public),
        )
        self.trust = DeviceTrust(
            hs.device_trust,
            self.keys_api,
            self.store,
            record_of=lambda user: self._clearances.get(user),  # the dict is replaced
            on_record=self._set_record,
            alert=self._alert_identity_change,
        )
        self.key_requests = KeyRequests(
            self._gw(),
            self.may_read,
            self.device_trusted,
            self._fresh_trust,
            self.audit,
            lambda outcome: self.metrics.key_requests.labels(outcome).inc(),
        )

    async def _fresh_trust(self, user_id: str) -> None:
        """Check a user's cross-signing again now, not from the cache."""
        if self.trust is not None:
            self.trust.invalidate([user_id])
            await self.trust.refresh([user_id])

    def _set_record(self, record: ClearanceRecord) -> None:
        self._clearances[record.user_id] = record

    async def _password_login(self, client: AsyncClient, sealer: Sealer) -> None:
        response = await client.login(self.secrets.password, self.config.homeserver.device_name)
        login = unwrap(response, LoginResponse, "login")
        await self._db(
            self.store.save_bot_session,
            login.user_id,
            login.device_id,
            sealer.seal_text(login.access_token, login.device_id),
        )
        log.info("logged in as %s, device %s", login.user_id, login.device_id)

    # ------------------------------------------------------------ rooms

    async def _provision_rooms(self) -> None:
        gateway = self._gw()
        joined = await gateway.joined_rooms()
        for i, cfg in enumerate(self.config.rooms):
            record = await self._db(self.store.room, cfg.key)
            policy_room = cfg.policy_room()
            try:
                room_id, changed = await provision(
                    gateway,
                    key=cfg.key,
                    name=cfg.name,
                    room=policy_room,
                    room_id=cfg.room_id or (record.room_id if record else None),
                    previous_rank=record.rank if record else None,
                    joined=joined,
                )
            except MatrixError as exc:
                raise StartupError(f"rooms[{i}] ({cfg.key}): {exc}") from None
            except ProvisionError as exc:
                raise StartupError(f"rooms[{i}]: {exc}") from None
            await self._db(
                self.store.save_room,
                RoomRecord(
                    key=cfg.key,
                    name=cfg.name,
                    label=policy_room.label.banner,
                    scheme=policy_room.scheme,
                    rank=policy_room.rank,
                    audience=tuple(sorted(policy_room.audience)),
                    room_id=room_id,
                ),
            )
            managed = ManagedRoom(cfg.key, cfg.name, policy_room, room_id)
            self.rooms_by_key[cfg.key] = managed
            self.rooms_by_id[room_id] = managed
            if changed:
                log.info("room %s (%s): %s", cfg.key, room_id, ", ".join(changed))
            if (i + 1) % 20 == 0 or i + 1 == len(self.config.rooms):
                log.info("rooms provisioned: %d/%d", i + 1, len(self.config.rooms))
        self.chat_routes = await self._db(self.store.chat_routes)
        for record in await self._db(self.store.rooms):
            if record.origin != "chat" or record.closed_at is not None or not record.room_id:
                continue
            try:
                label = parse_marking(record.label)
                policy_room = make_room(label, record.audience)
                room_id, _ = await provision(
                    gateway,
                    key=record.key,
                    name=record.name,
                    room=policy_room,
                    room_id=record.room_id,
                    previous_rank=record.rank,
                    joined=joined,
                )
            except (MarkingError, MatrixError, ProvisionError) as exc:
                log.error("task-force room %s not restored: %s", record.key, exc)
                continue
            managed = ManagedRoom(record.key, record.name, policy_room, room_id, "chat")
            self.rooms_by_key[record.key] = managed
            self.rooms_by_id[room_id] = managed

    # ------------------------------------------------------------ decisions

    async def _refresh_clearances(self) -> None:
        records = await self._db(self.store.clearances)
        self._clearances = {r.user_id: r for r in records}

    def today(self) -> date:
        return datetime.now(UTC).date()

    def may_join(self, user_id: str, room: ManagedRoom) -> Decision:
        record = self._clearances.get(user_id)
        if record is None:
            return Decision(False, (f"no clearance on record for {user_id}",))
        return may_join(policy_clearance(record), room.policy, self.today())

    def may_read(self, room_id: str, user_id: str) -> Decision:
        """May this person read what the bot sends into the room: `may_join` in a managed
        room, being the partner in a DM; nobody in any other room."""
        managed = self.rooms_by_id.get(room_id)
        if managed is not None:
            return self.may_join(user_id, managed)
        partner = self.direct.get(room_id)
        if partner is not None:
            if partner == user_id:
                return Decision(True, (f"{user_id} is the partner of this direct chat",))
            return Decision(False, (f"{user_id} is not the partner of this direct chat",))
        return Decision(False, ("not a room the bot manages or a direct chat it holds",))

    def key_recipients(self, room_id: str) -> list[str]:
        """Who may hold this room's key: members and invitees who may read it (the gateway
        shares it with those who have joined). The member list is brought up to date before
        a send when it may be behind (Gateway.ensure_current_members)."""
        room = self.client.rooms.get(room_id) if self.client is not None else None
        if room is None:
            return []
        return [u for u in room.users if u != self.user_id and self.may_read(room_id, u)]

    def device_trusted(self, user_id: str, device: OlmDevice) -> bool:
        """The device policy (`device_trust`), with identity pinning."""
        if device.deleted or self.trust is None:
            return False
        return self.trust.trusted(user_id, device.id, device.ed25519)

    async def send(
        self,
        room_id: str,
        content: dict[str, Any],
        tx_id: str | None = None,
        also_to: Sequence[OlmDevice] = (),
    ) -> str:
        await self._gw().ensure_current_members(room_id)
        if self.trust is not None:
            await self.trust.refresh(self.key_recipients(room_id))
        return await self._gw().send(
            room_id,
            content,
            recipients=lambda: self.key_recipients(room_id),
            device_trusted=self.device_trusted,
            tx_id=tx_id,
            also_to=also_to,
        )

    async def send_notice(
        self,
        room_id: str,
        document: Document,
        reply_to: str | None = None,
        also_to: Sequence[OlmDevice] = (),
        tx_id: str | None = None,
    ) -> str:
        content: dict[str, Any] = {
            "msgtype": "m.notice",
            "body": document.plain,
            "format": "org.matrix.custom.html",
            "formatted_body": document.html,
        }
        if reply_to:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        return await self.send(room_id, content, also_to=also_to, tx_id=tx_id)

    # ------------------------------------------------------------ membership

    async def enforce_member(self, room: ManagedRoom, user_id: str, why: str) -> bool:
        """Remove a member (or rescind an invite) who does not pass may_join. True if removed."""
        if user_id == self.user_id:
            return False
        decision = self.may_join(user_id, room)
        if decision.allowed:
            return False
        try:
            await self._gw().kick(room.room_id, user_id, KICK_REASON)
        except MatrixError as exc:
            log.warning("could not remove %s from %s: %s", user_id, room.key, exc)
            return False
        await self.audit(
            self.user_id,
            "member.removed",
            user_id,
            {"room": room.key, "why": why, "reason": decision.reason},
        )
        log.info("removed %s from %s (%s)", user_id, room.key, why)
        return True

    async def sweep(self) -> list[tuple[str, str]]:
        """Re-read the register (CLI changes) and remove everyone who no longer qualifies."""
        await self._refresh_clearances()
        removed: list[tuple[str, str]] = []
        client = self.client
        if client is None:
            return removed
        for managed in list(self.rooms_by_key.values()):
            room = client.rooms.get(managed.room_id)
            if room is None:
                continue
            for user_id in list(room.users):
                if await self.enforce_member(managed, user_id, "sweep"):
                    removed.append((managed.key, user_id))
        await self._db(self.store.prune_handled, datetime.now(UTC) - timedelta(days=30))
        return removed

    async def _sweep_forever(self) -> None:
        await self.synced.wait()
        interval = self.config.bot.sweep_interval.total_seconds()
        while not self._stop.is_set():
            try:
                await self.sweep()
                await self.relay.resend_pending()
            except Exception:
                log.exception("sweep failed; retrying at the next interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=interval)

    # ------------------------------------------------------------ sync

    async def _sync_forever(self) -> None:
        client = self.client
        assert client is not None
        token = await self._db(self.store.sync_token)
        initial = token is None  # never synced: the timeline is history, not commands
        first = True
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                response = await client.sync(
                    timeout=0 if first else SYNC_TIMEOUT_MS,
                    sync_filter=SYNC_FILTER,
                    since=token,
                    full_state=True if first else None,
                )
            except Exception as exc:  # nio raises aiohttp's connection errors after retries
                delay = backoff.next()
                log.warning(
                    "sync failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay
                )
                await self._sleep(delay)
                continue
            if isinstance(response, SyncError):
                delay = backoff.next()
                log.warning(
                    "sync refused: %s %s; retrying in %.1f s",
                    response.status_code,
                    response.message,
                    delay,
                )
                await self._sleep(delay)
                continue
            backoff.reset()
            try:
                await self._after_sync(client)
                await self._handle_sync(response, token, initial)
                await self._flush_deferred()
            except Exception:
                log.exception("handling a sync failed; the same events will be retried")
                await self._sleep(backoff.next())
                continue
            token = response.next_batch
            await self._db(self.store.save_sync_token, token)
            if first:
                self.first_sync_s = time.monotonic() - self.started_at
                log.info("first sync after %.2f s", self.first_sync_s)
                await self.sweep()
                await self.relay.resend_pending()
                await self.digests.start()
            first = initial = False
            self.last_sync = time.monotonic()
            self.synced.set()
            done, self._sync_done = self._sync_done, asyncio.Event()
            done.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _after_sync(self, client: AsyncClient) -> None:
        """What nio's sync_forever does between syncs: keys and to-device messages."""
        await client.send_to_device_messages()
        if client.should_upload_keys:
            await client.keys_upload()
        if client.should_query_keys:
            await client.keys_query()
        if client.should_claim_keys:
            await client.keys_claim(client.get_users_for_key_claiming())

    async def _handle_sync(self, response: SyncResponse, since: str | None, initial: bool) -> None:
        if self.trust is not None:
            changed = [*response.device_list.changed, *response.device_list.left]
            self.trust.invalidate(changed)
            # A cleared user's identity may have changed: check now, so admins hear of it
            # at once and not at the next message.
            await self.trust.refresh(u for u in changed if u in self._clearances)
        if self.key_requests is not None:
            for request in self.key_requests.requests_in(response.to_device_events):
                try:
                    self._key_request_queue.put_nowait(request)
                except asyncio.QueueFull:
                    self.metrics.key_requests.labels("dropped").inc()
        for room_id, info in response.rooms.invite.items():
            await self._on_invite(room_id, info.invite_state)
        for room_id, info in response.rooms.join.items():
            events = list(info.timeline.events)
            if info.timeline.limited and since and info.timeline.prev_batch:
                gap = await self._gw().messages_between(room_id, info.timeline.prev_batch, since)
                seen = {getattr(e, "event_id", None) for e in events}
                events = [e for e in gap if getattr(e, "event_id", None) not in seen] + events
                log.info("back-filled %d event(s) of a gap in %s", len(gap), room_id)
            for event in events:
                await self._on_event(room_id, event, initial)
        for room_id in response.rooms.leave:
            managed = self.rooms_by_id.get(room_id)
            if managed is not None:
                log.error("the bot is no longer in managed room %s (%s)", managed.key, room_id)
            if room_id in self.direct:
                partner = self.direct.pop(room_id)
                await self._db(self.store.forget_direct_room, room_id)
                log.info("direct room with %s closed", partner)

    async def _key_requests_forever(self) -> None:
        """One worker, off the sync loop: each request may ask the homeserver several things,
        and anyone can send them (the backlog is bounded; KeyRequests rate-limits users)."""
        while True:
            request = await self._key_request_queue.get()
            if self.key_requests is not None:
                await self.key_requests.handle(request)

    async def _on_invite(self, room_id: str, invite_state: Sequence[Any]) -> None:
        inviter, is_direct = None, False
        for event in invite_state:
            if isinstance(event, InviteMemberEvent) and event.state_key == self.user_id:
                inviter = event.sender
                is_direct = bool(event.content.get("is_direct"))
        gateway = self._gw()
        if room_id in self.rooms_by_id:
            await gateway.join(room_id)
            return
        bot = self.config.bot
        if inviter is not None and (inviter in bot.admins or inviter in bot.officers):
            try:
                await gateway.join(room_id)
            except MatrixError as exc:
                log.warning("could not join the DM from %s: %s", inviter, exc)
                return
            self.direct[room_id] = inviter
            await self._db(self.store.save_direct_room, inviter, room_id)
            await self.audit(
                self.user_id, "dm.accepted", inviter, {"room_id": room_id, "is_direct": is_direct}
            )
            return
        try:
            await gateway.leave(room_id)
        except MatrixError as exc:
            log.warning("could not decline the invite to %s: %s", room_id, exc)
        await self.audit(self.user_id, "invite.declined", inviter, {"room_id": room_id})

    async def _on_event(self, room_id: str, event: Any, initial: bool) -> None:
        managed = self.rooms_by_id.get(room_id)
        if isinstance(event, RoomMemberEvent):
            if managed is not None and not initial and event.membership in ("join", "invite"):
                await self._refresh_one(event.state_key)  # the CLI may have changed it
                await self.enforce_member(managed, event.state_key, f"{event.membership} event")
            return
        if isinstance(event, MegolmEvent):
            if event.sender != self.user_id and (managed is not None or room_id in self.direct):
                await self._hold_undecryptable(room_id, event)
            return
        if isinstance(event, RedactionEvent):
            if managed is not None and not initial and event.sender != self.user_id:
                await self.relay.handle_redaction(managed, event.redacts, event.sender)
            return
        if not isinstance(event, RoomMessageText) or event.sender == self.user_id or initial:
            return
        if managed is None and room_id not in self.direct:
            return
        await self._on_message(room_id, event, managed)

    async def _on_message(
        self, room_id: str, event: RoomMessageText, managed: ManagedRoom | None
    ) -> None:
        content = event.source.get("content", {})
        relates = content.get("m.relates_to", {}) or {}
        if relates.get("rel_type") == "m.replace":  # an edit: never a command
            if managed is not None and relates.get("event_id"):
                await self._on_edit(room_id, event, managed, relates["event_id"], content)
            return
        command = is_command(event.body, self.config.bot.command_prefixes)
        if not command and not (managed is not None and is_tagged(event.body)):
            return
        if await self._db(self.store.is_handled, event.event_id):
            return
        if not command and managed is not None:
            source = Source(managed, event.event_id, event.sender, _sent_at(event), event)
            reply = await self.relay.handle(source, event.body)
            await self._db(self.store.mark_handled, event.event_id, room_id)
            if reply is not None:
                # The receipt goes to the source room while the next message's copies go to
                # the targets; the batch waits for it before the sync token moves.
                self._defer(self._reply_to_sender(room_id, event, reply))
            return
        room = self._gw().room(room_id)
        if room is not None and not room.encrypted:
            await self.audit(
                event.sender,
                "command.refused",
                None,
                {"room_id": room_id, "reason": "room not encrypted"},
            )
            await self._gw().client.room_send(
                room_id,
                "m.room.message",
                {
                    "msgtype": "m.notice",
                    "body": "liaison-bot only works in encrypted rooms: turn on encryption here.",
                },
            )
            await self._db(self.store.mark_handled, event.event_id, room_id)
            return
        refusal = await self._untrusted_sender(room_id, event)
        if refusal is not None:
            problem, device = refusal
            await self.audit(
                event.sender,
                "command.untrusted-device",
                None,
                {"room_id": room_id, "problem": problem},
            )
            await self.send_notice(
                room_id,
                doc(
                    para(
                        "⚠ Not acted on: ",
                        problem,
                        ". The bot takes commands only from "
                        "devices their owner has verified (cross-signed). Nothing was changed.",
                    )
                ),
                event.event_id,
                also_to=[device] if device is not None else [],
            )
            await self._db(self.store.mark_handled, event.event_id, room_id)
            return
        mentions = tuple(content.get("m.mentions", {}).get("user_ids", ()) or ())
        invocation = Invocation(
            sender=event.sender,
            room_id=room_id,
            event_id=event.event_id,
            body=event.body,
            formatted_body=event.formatted_body,
            mentions=mentions,
            room_key=managed.key if managed else None,
            is_direct=managed is None,
            event=event,
            sent_at=_sent_at(event),
        )
        outcome = await dispatch(
            self.registry,
            invocation,
            self.roles_of(event.sender),
            self,
            self.config.bot.command_prefixes,
        )
        if outcome is not None:
            await self._reply(invocation, outcome.reply)
        await self._db(self.store.mark_handled, event.event_id, room_id)

    async def _untrusted_sender(
        self, room_id: str, event: Any
    ) -> tuple[str, OlmDevice | None] | None:
        """The trusted-sender gate (DESIGN §7a): None when the event's device passes the
        device policy, else (why not, the device when known). Tagged messages use it too."""
        gateway, trust = self._gw(), self.trust
        if trust is None:
            return ("device trust is not set up", None)
        device = gateway.sender_device(room_id, event)
        if device is None and gateway.client.should_query_keys:
            await gateway.client.keys_query()
            device = gateway.sender_device(room_id, event)
        if device is None:
            return ("the sending device is unknown or its room key was forwarded", None)
        await trust.refresh([event.sender])
        problem = trust.device_problem(event.sender, device.id, device.ed25519)
        return (problem, device) if problem else None

    # ------------------------------------------------------------ undecryptable events

    async def _load_pending(self) -> None:
        for pending in await self._db(self.store.open_pending):
            event = MegolmEvent.from_dict(pending.event)
            if isinstance(event, MegolmEvent):
                event.room_id = pending.room_id
                self._pending[pending.event_id] = (pending.room_id, event, pending.received_at)

    async def _hold_undecryptable(self, room_id: str, event: MegolmEvent) -> None:
        """Keep it (the sync token may move on), ask for its key, retry until the grace ends."""
        if event.event_id in self._pending:
            return
        event.room_id = room_id
        if await self._db(
            self.store.add_pending, event.event_id, room_id, event.sender, event.source
        ):
            self._pending[event.event_id] = (room_id, event, datetime.now(UTC))
            self.metrics.undecryptable.labels("held").inc()
            log.info(
                "could not decrypt %s from %s yet; asking for its key", event.event_id, event.sender
            )
            try:
                await self._gw().client.request_room_key(event)
            except Exception as exc:  # a request already in flight is refused locally
                log.debug("room key request for %s: %s", event.event_id, exc)

    async def retry_pending(self) -> None:
        client = self._gw().client
        grace = self.config.bot.undecryptable_grace
        now = datetime.now(UTC)
        for event_id, (room_id, event, received) in list(self._pending.items()):
            try:
                decrypted = client.decrypt_event(event)
            except Exception:
                decrypted = None
            if decrypted is not None and not isinstance(decrypted, MegolmEvent):
                del self._pending[event_id]
                await self._db(self.store.resolve_pending, event_id, "decrypted")
                self.metrics.undecryptable.labels("decrypted").inc()
                await self._on_event(room_id, decrypted, False)
                continue
            if now - received >= grace:
                del self._pending[event_id]
                await self._report_undecryptable(room_id, event)

    async def _report_undecryptable(self, room_id: str, event: MegolmEvent) -> None:
        device = self._gw().device_by_id(event.sender, event.device_id or "")
        await self._db(
            self.store.resolve_pending,
            event.event_id,
            "undecryptable",
            {"device_id": event.device_id, "session_id": event.session_id},
        )
        log.warning("%s from %s stayed unreadable; told the sender", event.event_id, event.sender)
        self.metrics.undecryptable.labels("reported").inc()
        try:
            await self.send_notice(
                room_id,
                doc(
                    para(
                        "⚠ I could not decrypt your message (",
                        Code(event.event_id),
                        "): its room key never reached me, so nothing in it was read, acted on "
                        "or relayed. Check that your device is verified, then send it again.",
                    )
                ),
                event.event_id,
                also_to=[device] if device is not None else [],
            )
        except MatrixError as exc:
            log.error("could not tell %s about an unreadable message: %s", event.sender, exc)

    async def _pending_forever(self) -> None:
        await self.synced.wait()
        while not self._stop.is_set():
            try:
                if self._pending:
                    await self.retry_pending()
            except Exception:
                log.exception("retrying undecryptable events failed")
            await self._sleep(1.0)

    # ------------------------------------------------------------ identity changes

    async def _alert_identity_change(self, record: ClearanceRecord, new_key: str) -> None:
        alert = doc(
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
        await self.alert_admins(alert)

    async def alert_admins(self, document: Document) -> None:
        """To [bot] admin_room, else to each admin's direct message with the bot."""
        targets = (
            [self.config.bot.admin_room]
            if self.config.bot.admin_room
            else [await self.direct_room_for(admin) for admin in self.config.bot.admins]
        )
        for room_id in targets:
            if room_id is not None:
                self._spawn(self._send_when_ready(room_id, document), f"alert-{room_id}")

    async def _on_edit(
        self,
        room_id: str,
        event: RoomMessageText,
        managed: ManagedRoom,
        original: str,
        content: dict[str, Any],
    ) -> None:
        if await self._db(self.store.is_handled, event.event_id):
            return
        new_body = (content.get("m.new_content") or {}).get("body")
        if isinstance(new_body, str):
            source = Source(managed, original, event.sender, _sent_at(event), event)
            reply = await self.relay.handle_edit(source, new_body)
            if reply is not None:
                await self._reply_to_sender(room_id, event, reply)
        await self._db(self.store.mark_handled, event.event_id, room_id)

    async def _reply_to_sender(self, room_id: str, event: Any, reply: Document) -> None:
        """A reply the sending device can read even when the policy excludes it (it is told
        why it was refused)."""
        device = self._gw().sender_device(room_id, event)
        also = (
            [device] if device is not None and not self.device_trusted(event.sender, device) else []
        )
        await self.send_notice(room_id, reply, event.event_id, also_to=also)

    def is_member(self, user_id: str, managed: ManagedRoom) -> bool:
        """Joined (not merely invited) to a managed room, as the last sync showed."""
        room = self.client.rooms.get(managed.room_id) if self.client is not None else None
        member = room.users.get(user_id) if room is not None else None
        return member is not None and not member.invited

    def roles_of(self, user_id: str) -> frozenset[Role]:
        roles = {Role.ANYONE}
        if user_id in self.config.bot.admins:
            roles.add(Role.ADMIN)
        if user_id in self.config.bot.officers:
            roles.add(Role.OFFICER)
        if any(self.is_member(user_id, m) for m in self.rooms_by_key.values()):
            roles.add(Role.MEMBER)
        return frozenset(roles)

    async def _reply(self, invocation: Invocation, reply: Reply) -> None:
        if not reply.private or invocation.is_direct:
            await self.send_notice(invocation.room_id, reply.document, invocation.event_id)
            return
        dm = await self.direct_room_for(invocation.sender)
        await self.send_notice(
            invocation.room_id,
            doc("Answered in your direct messages with the bot."),
            invocation.event_id,
        )
        self._spawn(self._send_when_ready(dm, reply.document), f"dm-{invocation.sender}")

    async def direct_room_for(self, user_id: str) -> str:
        """The DM with this person, created (encrypted) if there is none."""
        for room_id, partner in reversed(self.direct.items()):  # the newest DM wins
            room = self._gw().room(room_id)
            if partner == user_id and (room is None or user_id in room.users):
                return room_id  # a DM they left is not reused: they would never read it
        room_id = await self._gw().create_room(
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
        self._gw().mark_members_stale(room_id)
        self.direct[room_id] = user_id
        await self._db(self.store.save_direct_room, user_id, room_id)
        return room_id

    def _ready_for(self, room_id: str) -> bool:
        """The room is synced and, in a DM, its partner has joined (what is sent before
        the join could never be read: history is visible from joining)."""
        room = self._gw().room(room_id)
        if room is None:
            return False
        partner = self.direct.get(room_id)
        member = room.users.get(partner) if partner is not None else None
        return partner is None or (member is not None and not member.invited)

    async def _send_when_ready(self, room_id: str, document: Document) -> None:
        """Send once the room is ready (`_ready_for`), judged after each sync; a reply whose
        reader does not join within `dm_join_timeout` is dropped and audited, never sent."""
        timeout = self.config.bot.dm_join_timeout.total_seconds()
        deadline = time.monotonic() + timeout
        while not self._ready_for(room_id):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                partner = self.direct.get(room_id)
                why = "the bot stopped" if self._stop.is_set() else f"not joined in {timeout:g} s"
                log.warning("a reply to %s in %s was dropped: %s", partner, room_id, why)
                await self.audit(
                    self.user_id, "dm.reply.dropped", partner, {"room_id": room_id, "reason": why}
                )
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sync_done.wait(), remaining)
        await self.send_notice(room_id, document)

    # ------------------------------------------------------------ services (commands)

    async def clearance(self, user_id: str) -> ClearanceRecord | None:
        return await self._db(self.store.clearance, user_id)

    async def clearances(self) -> Sequence[ClearanceRecord]:
        return await self._db(self.store.clearances)

    async def grant(
        self,
        actor: str,
        user_id: str,
        level: str,
        *,
        nationality: str | None,
        expires: date | None,
        caveats: Sequence[str],
    ) -> ClearanceRecord:
        try:
            record = await self._db(
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
        self._clearances[record.user_id] = record
        return record

    async def revoke(self, actor: str, user_id: str, scope: str | None) -> RevokeOutcome:
        try:
            record = await self._db(self.register.revoke, actor, user_id, scope)
        except RegisterError as exc:
            raise CommandError(str(exc)) from None
        self._clearances[record.user_id] = record
        removed = []
        client = self._gw().client
        for managed in self.rooms_by_key.values():
            room = client.rooms.get(managed.room_id)
            if (
                room is not None
                and user_id in room.users
                and await self.enforce_member(managed, user_id, f"revoked by {actor}")
            ):
                removed.append(managed.key)
        return RevokeOutcome(record, tuple(removed))

    async def confirm_identity(self, actor: str, user_id: str, key: str) -> ClearanceRecord:
        record = await self._db(self.store.clearance, user_id)
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
        updated = await self._db(
            self.store.pin_identity, user_id, wanted, actor, "identity.confirmed"
        )
        assert updated is not None
        self._set_record(updated)
        if self.trust is not None:
            self.trust.invalidate([user_id])
        return updated

    async def search(
        self,
        actor: str,
        room_key: str,
        words: Sequence[str],
        topic: str | None,
        since: str | None,
        exercise: bool,
    ) -> Document:
        from bot.services.search import MAX_SCANNED, results_document
        from bot.services.search import search as find

        managed = self._managed(room_key)
        if not self.is_member(actor, managed):
            raise PermissionDenied(
                f"only members of {room_key} may search from it",
                "not a member of that room",
                room=room_key,
            )
        try:
            span = parse_duration(since) if since else timedelta(days=30)
        except ValueError as exc:
            raise CommandError(f"--since: {exc}") from None
        if span > timedelta(days=365):
            raise CommandError("--since: at most 365d")
        start = datetime.now(UTC) - span
        stored = await self._db(self.store.items_since, start, MAX_SCANNED)
        candidates = [c for c in (self.digests.item_of(i) for i in stored) if c is not None]
        found = find(managed, candidates, words, topic, exercise)
        await self.audit(actor, "search", room_key, {"matches": len(found), "scanned": len(stored)})
        query = " ".join(words) + (f" #{topic.lstrip('#')}" if topic else "")
        return results_document(managed, query, found, start, len(stored), exercise)

    async def room_create(
        self, actor: str, key: str, name: str, label_text: str, audience: Sequence[str] | None
    ) -> ManagedRoom:
        if key in self.rooms_by_key or await self._db(self.store.room, key) is not None:
            raise CommandError(f"a room with key {key!r} exists already; choose another key")
        try:
            label = parse_marking(label_text, extra_caveats=self.config.bot.caveats)
            policy_room = make_room(label, parse_audience(audience) if audience else None)
        except MarkingError as exc:
            raise CommandError(f"LABEL: {exc}") from None
        try:
            room_id, _ = await provision(
                self._gw(),
                key=key,
                name=name,
                room=policy_room,
                room_id=None,
                previous_rank=None,
                joined=set(),
            )
        except MatrixError as exc:
            raise CommandError(f"the homeserver did not create the room: {exc.message}") from None
        await self._db(
            self.store.save_room,
            RoomRecord(
                key=key,
                name=name,
                label=label.banner,
                scheme=label.scheme,
                rank=label.rank,
                audience=tuple(sorted(policy_room.audience)),
                room_id=room_id,
                origin="chat",
            ),
            actor,
        )
        managed = ManagedRoom(key, name, policy_room, room_id, "chat")
        self.rooms_by_key[key] = managed
        self.rooms_by_id[room_id] = managed
        return managed

    async def room_close(self, actor: str, key: str) -> list[str]:
        managed = self._managed(key)
        if managed.origin != "chat":
            raise CommandError(f"{key} comes from the config file; remove it there")
        removed: list[str] = []
        room = self._gw().room(managed.room_id)
        for user_id in list(room.users) if room is not None else []:
            if user_id == self.user_id:
                continue
            try:
                await self._gw().kick(managed.room_id, user_id, "room closed")
                removed.append(user_id)
            except MatrixError as exc:
                log.warning("could not remove %s from closed %s: %s", user_id, key, exc)
        await self._db(self.store.close_room, actor, key, removed)
        self.chat_routes = [(a, b) for a, b in self.chat_routes if key not in (a, b)]
        del self.rooms_by_key[key]
        self.rooms_by_id.pop(managed.room_id, None)
        return removed

    async def route_change(self, actor: str, source: str, target: str, add: bool) -> None:
        self._managed(source)
        self._managed(target)
        if source == target:
            raise CommandError("a room cannot route to itself")
        if not add and target in self.config.route_targets().get(source, []):
            raise CommandError(f"{source} → {target} comes from the config file; remove it there")
        if add:
            if target in self.route_targets().get(source, []):
                raise CommandError(f"{source} → {target} exists already")
            await self._db(self.store.add_route, actor, source, target)
            self.chat_routes.append((source, target))
        else:
            if not await self._db(self.store.remove_route, actor, source, target):
                raise CommandError(f"no chat route {source} → {target} (see !routes)")
            self.chat_routes.remove((source, target))

    async def room_policies(self) -> list[tuple[str, str, Any]]:
        return [(m.key, m.name, m.policy) for m in self.rooms_by_key.values()]

    async def known_caveats(self) -> Sequence[str]:
        return self.config.caveats

    async def relay_message(
        self, invocation: Invocation, targets: Sequence[str], message: str
    ) -> Document:
        managed = self.rooms_by_key.get(invocation.room_key or "")
        if managed is None:
            raise CommandError("!relay works in the source room, where the message belongs")
        source = Source(
            managed,
            invocation.event_id,
            invocation.sender,
            invocation.sent_at or datetime.now(UTC),
            invocation.event,
        )
        reply = await self.relay.handle(source, message, only=targets)
        if reply is None:
            raise CommandError("the message must be tagged: [MARKING] [PRECEDENCE] text")
        return reply

    def _managed(self, key: str) -> ManagedRoom:
        managed = self.rooms_by_key.get(key)
        if managed is None:
            raise CommandError(f"no managed room {key!r} (rooms: {', '.join(self.rooms_by_key)})")
        return managed

    async def digest_now(self, actor: str, room_key: str, roles: frozenset[Role]) -> str:
        managed = self._managed(room_key)
        if not roles & {Role.ADMIN, Role.OFFICER} and not self.is_member(actor, managed):
            raise PermissionDenied(
                f"members may ask for the digest of their own room only; you are not in {room_key}",
                "not a member of that room",
                room=room_key,
            )
        await self.digests.post_now(actor, managed)
        return managed.key

    async def digest_schedule(
        self,
        actor: str,
        room_key: str,
        cron: str,
        window: str | None,
        sources: Sequence[str] | None,
    ) -> str:
        self._managed(room_key)
        try:
            cron_trigger(cron, self.config.bot.timezone)
            span = parse_duration(window) if window else timedelta(hours=24)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        chosen = list(sources) if sources else [room_key]
        for key in chosen:
            self._managed(key)
        schedule = await self.digests.add(actor, room_key, cron, span, chosen)
        return describe(schedule, dict(self.digests.next_runs()).get(schedule.key))

    async def digest_list(self) -> list[str]:
        runs = dict(self.digests.next_runs())
        return [describe(s, runs.get(s.key)) for s in await self.digests.schedules()]

    async def digest_cancel(self, actor: str, key: str) -> None:
        if key.startswith("cfg-"):
            raise CommandError(f"{key} comes from the config file; remove it there")
        if not await self.digests.cancel(actor, key):
            raise CommandError(f"no active chat schedule {key!r} (see !digest list)")

    async def invite(self, actor: str, user_id: str, room_key: str) -> InviteOutcome:
        managed = self.rooms_by_key.get(room_key)
        if managed is None:
            keys = ", ".join(self.rooms_by_key) or "none"
            raise CommandError(f"no managed room {room_key!r} (rooms: {keys})")
        await self._refresh_one(user_id)
        decision = self.may_join(user_id, managed)
        if not decision.allowed:
            await self.audit(
                actor, "invite.refused", user_id, {"room": room_key, "reason": decision.reason}
            )
            self.metrics.invites.labels("refused").inc()
            return InviteOutcome(decision, False)
        try:
            await self._gw().invite(managed.room_id, user_id)
        except MatrixError as exc:
            await self.audit(
                actor, "invite.failed", user_id, {"room": room_key, "error": exc.errcode or "error"}
            )
            self.metrics.invites.labels("failed").inc()
            raise CommandError(f"the homeserver did not invite {user_id}: {exc.message}") from None
        await self.audit(actor, "invite", user_id, {"room": room_key, "reason": decision.reason})
        self.metrics.invites.labels("invited").inc()
        return InviteOutcome(decision, True)

    async def _refresh_one(self, user_id: str) -> None:
        record = await self._db(self.store.clearance, user_id)
        if record is None:
            self._clearances.pop(user_id, None)
        else:
            self._clearances[user_id] = record

    async def rooms(self) -> Sequence[RoomSummary]:
        client = self._gw().client
        out = []
        for managed in self.rooms_by_key.values():
            room = client.rooms.get(managed.room_id)
            members = sum(1 for u in room.users.values() if not u.invited) if room else 0
            out.append(
                RoomSummary(
                    managed.key,
                    managed.name,
                    managed.banner,
                    managed.policy.rank,
                    members,
                    managed.room_id,
                )
            )
        return out

    async def routes(self) -> Sequence[RouteSummary]:
        configured = self.config.route_targets()
        out = [RouteSummary(k, tuple(v)) for k, v in configured.items()]
        chat: dict[str, list[str]] = {}
        for source, target in self.chat_routes:
            chat.setdefault(source, []).append(target)
        out += [RouteSummary(k, tuple(v), "chat") for k, v in chat.items()]
        return out

    async def audit_recent(self, limit: int) -> Sequence[AuditEntry]:
        return await self._db(self.store.recent_audit, limit)

    async def audit_verify(self) -> AuditVerdict:
        return await self._db(self.store.verify_audit)

    async def status(self) -> StatusInfo:
        lag = None if self.last_sync is None else time.monotonic() - self.last_sync
        client = self._gw().client
        return StatusInfo(
            uptime_s=time.monotonic() - self.started_at,
            sync_lag_s=lag,
            rooms=len(self.rooms_by_key),
            pending_relays=await self.relay.pending_count(),
            next_digests=tuple(
                f"{key} {when:%Y-%m-%d %H:%M %Z}" for key, when in self.digests.next_runs() if when
            ),
            device_id=str(client.device_id),
        )


def _sent_at(event: Any) -> datetime:
    stamp = getattr(event, "server_timestamp", None)
    if isinstance(stamp, int) and stamp > 0:
        return datetime.fromtimestamp(stamp / 1000, UTC)
    return datetime.now(UTC)


async def run_bot(
    config: Config, secrets: Secrets, *, ready: Callable[[LiaisonBot], None] | None = None
) -> None:
    """Run until SIGINT/SIGTERM: migrate the database, start, stop cleanly."""
    import signal

    from bot.storage.migrate import upgrade

    url = config.database_url()
    await asyncio.to_thread(upgrade, url)
    store = Store.from_url(url)
    bot = LiaisonBot(config, store, secrets)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, bot.request_stop)
    try:
        await bot.start()
        if ready is not None:
            ready(bot)
        await bot._stop.wait()
    finally:
        await bot.close()
        store.close()
