"""The composition root: builds each service on the narrow ports it needs, starts the
loops, supervises them and stops them. No rule lives here; to find how something is done,
follow the wiring in `_build` to the module that owns it (README "Architecture").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from bot.config import Config
from bot.gate.publish import publish_settings
from bot.ha import SendGate
from bot.matrix.events import EventRouter, PoisonGuard
from bot.matrix.gateway import Client, Gateway
from bot.matrix.keyshare import KeyRequests
from bot.matrix.messenger import DirectRooms, Messenger
from bot.matrix.session import StoppedWaiting, cross_sign, login
from bot.matrix.sync import SyncLoop, SyncProgress
from bot.matrix.trust import DeviceTrust, KeysAPI
from bot.matrix.undecryptable import Undecryptable
from bot.metrics import Metrics, bound_port, serve
from bot.services.audit import StoreAudit
from bot.services.command_ports import CommandPorts
from bot.services.digest import DigestService
from bot.services.inbox import Inbox
from bot.services.ingest import FeedListener
from bot.services.membership import Membership
from bot.services.register import ClearanceRegister
from bot.services.relay import RelayEngine
from bot.services.release import ReleaseDesk
from bot.services.rooms import RoomDirectory
from bot.services.search import Inventory
from bot.services.slash import CommandsPublisher
from bot.startup import Secrets, StartupError
from bot.storage import Store, audit_key_from, in_thread
from bot.storage.sealing import Sealer
from bot.tasks import Supervisor
from commands import build_registry
from policy.ids import UserId

log = logging.getLogger(__name__)

__all__ = ["LiaisonBot", "Secrets", "StartupError"]


class LiaisonBot:
    """One bot: its parts are attributes, built at `start` (after login: most of them
    need the homeserver connection)."""

    gateway: Gateway
    trust: DeviceTrust
    rooms: RoomDirectory
    membership: Membership
    messenger: Messenger
    key_requests: KeyRequests
    relay: RelayEngine
    release: ReleaseDesk
    digests: DigestService
    inventory: Inventory
    commands: CommandPorts
    undecryptable: Undecryptable
    inbox: Inbox
    slash: CommandsPublisher
    router: EventRouter
    sync: SyncLoop
    feeds: FeedListener | None = None
    metrics_port: int | None = None  # the port [metrics] bind holds once started

    def __init__(
        self,
        config: Config,
        store: Store,
        secrets: Secrets,
        gate: SendGate | None = None,
        connect_params: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.config = config
        self.gate = gate or SendGate.open_always()  # shut for a node that lost its lease
        self.connect_params = connect_params  # a node's epoch, for the crypto store's sessions
        self.store = store
        self.secrets = secrets
        self.registry = build_registry()
        self.tasks = Supervisor()
        self.synced = asyncio.Event()  # set once the first sync is handled
        self.progress = SyncProgress()
        self.metrics = Metrics(self.progress.age)
        self.gate.on_refused = self.metrics.ha_fenced.inc
        self.audit = StoreAudit(store)
        self.direct = DirectRooms(store)
        self.started_at = time.monotonic()
        self._exit = contextlib.AsyncExitStack()  # what to undo at close, newest first

    @property
    def user_id(self) -> UserId:
        return self.config.homeserver.user_id

    @property
    def client(self) -> Client:  # for tests and tools; the bot goes through `gateway`
        return self.gateway.client

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Log in (or reuse the device), provision rooms, start syncing and sweeping; a stop
        while the homeserver is waited for returns at once."""
        await self.serve_metrics()
        if self.store.audit_key is None:  # every row the bot writes is keyed
            self.store.audit_key = audit_key_from(self.secrets.data_key)
        await in_thread(self.store.key_audit_log)
        await in_thread(publish_settings, self.store, self.config)  # what the gate reads
        try:
            self.gateway = await login(
                self.config, self.secrets, self.store, self.gate,
                connect_params=self.connect_params, stopping=self.tasks.stopping,
            )  # fmt: skip
        except StoppedWaiting:
            return  # stopped while waiting for the homeserver: nothing was started
        self._exit.push_async_callback(self.gateway.close)  # its client then, reloaded or not
        keys_api = await cross_sign(self.gateway, self.config, self.secrets, self.store, self.gate)
        self._exit.push_async_callback(keys_api.close)
        await self.direct.load()
        self._exit.push_async_callback(self.tasks.close)  # after the scheduler stops
        self._build(self.gateway, keys_api)
        await self.membership.refresh()
        await self.rooms.provision_all()
        await self.undecryptable.load()
        self.tasks.spawn(self.sync.run(), "sync")
        self.tasks.spawn(self._sweep_forever(), "sweep")
        self.tasks.spawn(self._retry_undecryptable(), "undecryptable")
        self.tasks.spawn(self.key_requests.run(), "key-requests")
        ingest = self.config.ingest
        if ingest is not None and ingest.feeds:
            self.feeds = FeedListener(
                list(ingest.feeds), self.secrets.feed_tokens, self.config.caveats,
                self.rooms, self.relay, self.messenger, self.audit, self.metrics,
            )  # fmt: skip
            await self.feeds.start(ingest.bind)
            self._exit.push_async_callback(self.feeds.stop)

    async def serve_metrics(self) -> None:
        """The metrics listener ([metrics] bind), once: a standby serves it before start."""
        if self.config.metrics is not None and self.metrics_port is None:
            runner = await serve(self.metrics, self.config.metrics.bind)
            self._exit.push_async_callback(runner.cleanup)
            self.metrics_port = bound_port(runner)

    def _build(self, gateway: Gateway, keys_api: KeysAPI) -> None:
        config, store, settings = self.config, self.store, self.config.bot
        self.rooms = RoomDirectory(config, store, gateway)
        self.membership = membership = Membership(
            settings,
            store,
            ClearanceRegister(store, settings.caveats),
            self.rooms,
            gateway,
            self.audit,
            self.metrics,
            partner_of=self.direct.partner_of,
            identity_confirmed=lambda user: self.trust.invalidate([user]),
            check_identity=self._fresh_trust,
        )
        membership.user_id = self.user_id
        self.trust = DeviceTrust(
            config.homeserver.device_trust,
            keys_api,
            store,
            record_of=membership.record_of,
            on_record=membership.remember,
            alert=lambda record, key: self.messenger.alert_identity_change(record, key),
        )
        self.messenger = messenger = Messenger(
            gateway,
            self.trust,
            settings,
            self.direct,
            membership.key_recipients,
            self.audit,
            self.tasks,
            self.progress.next_sync,
            self._admin_room_id,
            membership.refresh_room,
        )
        messenger.watch_register(store)
        self.key_requests = KeyRequests(
            gateway,
            membership.may_read,
            messenger.device_trusted,
            self._fresh_trust,
            self.audit,
            lambda outcome: self.metrics.key_requests.labels(outcome).inc(),
        )
        self.relay = RelayEngine(
            settings, store, self.rooms, messenger, messenger, self.audit, self.metrics,
            self.secrets.data_key,
        )  # fmt: skip
        self.digests = DigestService(
            config, store, self.rooms, messenger, self.audit, self.metrics, self.relay.open_item
        )
        self.inventory = Inventory(
            store, self.rooms, membership.is_member, self.digests.item_of, self.audit
        )
        self.commands = CommandPorts(
            store, config.caveats, self.rooms, membership, self.relay, self.digests,
            self.inventory, self.audit, self.progress.age, lambda: gateway.device_id,
            self.started_at,
        )  # fmt: skip
        self.release = ReleaseDesk(
            store, self.rooms, self.relay, messenger, messenger, self.audit, self.metrics,
            config.release_policy, membership.record_of, self.secrets.data_key, config.caveats,
        )  # fmt: skip
        self.relay.holds = self.commands.release = self.release
        self.undecryptable = Undecryptable(
            gateway, messenger, store, self.metrics, settings.undecryptable_grace, self.tasks
        )
        self.slash = slash = CommandsPublisher(
            self.registry, gateway, self.rooms, self.direct, membership.roles_of,
            self._admin_room_id, self.tasks.spawn,
        )  # fmt: skip
        slash.listen(self.rooms.listeners, self.direct.listeners, membership.role_listeners)
        self.inbox = Inbox(
            store, self.rooms, membership, self.relay, messenger, messenger, gateway, self.audit,
            self.tasks, self.registry, self.commands, settings.command_prefixes,
            user_id=self.user_id, vocabulary=slash.vocabulary,
        )  # fmt: skip
        guard = PoisonGuard(
            store, self.audit, messenger.alert_admins, self.metrics.events_failed.inc
        )
        self.router = EventRouter(
            gateway, settings, self.rooms, self.direct, membership, self.trust, self.key_requests,
            self.undecryptable, self.relay, self.inbox, self.audit, guard, self.release,
        )  # fmt: skip
        self.undecryptable.on_decrypted = self.router.on_decrypted
        snapshots = Sealer(self.secrets.data_key, "room-snapshot")
        handle, first = self.router.handle_sync, self._first_synced
        self.sync = SyncLoop(gateway, store, self.tasks, self.progress, handle, first, snapshots)
        self._exit.callback(self.digests.shutdown)

    def request_stop(self) -> None:
        self.tasks.stopping.set()

    async def close(self) -> None:
        """Stop tasks and the HTTP sessions. Never logs out: that would delete the device
        and its keys on the server."""
        self.tasks.stopping.set()
        await self._exit.aclose()
        log.info("stopped")

    # ------------------------------------------------------------ glue between parts

    async def _first_synced(self) -> None:
        self.tasks.spawn(self.rooms.revalidate(self.messenger.alert_admins), "revalidate-rooms")
        self.slash.rooms_changed()  # each room's commands, sent where they changed
        await self.membership.sweep(self.messenger.alert_admins)
        await self.relay.start()
        await self.release.start()  # what expired while the bot was down
        await self.digests.start()
        if self.config.siem is not None:  # the audit to the SOC; only where configured
            from bot.siem.wiring import build_exporter

            alert = self.messenger.alert_admins
            siem = build_exporter(self.config, self.store, alert, self.metrics)
            self.tasks.spawn(siem.run(), "siem-export")
        self.synced.set()

    async def _retry_undecryptable(self) -> None:
        await self.synced.wait()
        await self.undecryptable.run()

    def _admin_room_id(self) -> str | None:
        managed = self.rooms.by_key.get(self.config.bot.admin_room or "")
        return managed.room_id if managed is not None else None

    async def _fresh_trust(self, user_id: str) -> None:
        """Check a user's cross-signing again now, not from the cache."""
        self.trust.invalidate([user_id])
        await self.trust.refresh([user_id])

    async def _sweep_forever(self) -> None:
        await self.synced.wait()
        interval = self.config.bot.sweep_interval.total_seconds()
        while not self.tasks.stopping.is_set():
            try:
                await self.membership.sweep(self.messenger.alert_admins)
                await self.relay.resend_pending()
                await self.release.expire_due()  # release approval timeouts
            except Exception:
                log.exception("sweep failed; retrying at the next interval")
            await self.tasks.sleep(interval)
