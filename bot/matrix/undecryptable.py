"""Events the bot could not decrypt yet: held (in the store too: the sync token may move
on), their key asked for (nio sends the request to the bot's own devices only), retried
each second, so a room key that arrives late is used, and reported to the sender when the
grace period ends without a key. Nothing in them is read, acted on or relayed until
decrypted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from nio import MegolmEvent

from bot.matrix.gateway import Gateway, MatrixError
from bot.matrix.messenger import Messenger
from bot.metrics import Metrics
from bot.storage import PendingOutcome, Store, in_thread
from bot.tasks import Supervisor
from bot.wire import txn_id
from commands.document import Code, doc, para

log = logging.getLogger(__name__)

OnDecrypted = Callable[[str, Any], Awaitable[None]]


class Undecryptable:
    def __init__(
        self,
        gateway: Gateway,
        messenger: Messenger,
        store: Store,
        metrics: Metrics,
        grace: timedelta,
        tasks: Supervisor,
    ) -> None:
        self.gateway = gateway
        self.messenger = messenger
        self.store = store
        self.metrics = metrics
        self.grace = grace
        self.tasks = tasks
        self.on_decrypted: OnDecrypted | None = None  # the event router, once built
        self._pending: dict[str, tuple[str, MegolmEvent, datetime]] = {}

    async def load(self) -> None:
        for pending in await in_thread(self.store.open_pending):
            event = MegolmEvent.from_dict(pending.event)
            if isinstance(event, MegolmEvent):
                event.room_id = pending.room_id
                self._pending[pending.event_id] = (pending.room_id, event, pending.received_at)

    async def hold(self, room_id: str, event: MegolmEvent) -> None:
        """Keep it (the sync token may move on), ask for its key, retry until the grace ends."""
        if event.event_id in self._pending:
            return
        event.room_id = room_id
        if await in_thread(
            self.store.add_pending, event.event_id, room_id, event.sender, event.source
        ):
            self._pending[event.event_id] = (room_id, event, datetime.now(UTC))
            self.metrics.undecryptable.labels("held").inc()
            log.info(
                "could not decrypt %s from %s yet; asking for its key", event.event_id, event.sender
            )
            try:
                await self.gateway.request_room_key(event)
            except Exception as exc:  # a request already in flight is refused locally
                log.debug("room key request for %s: %s", event.event_id, exc)

    async def retry(self) -> None:
        now = datetime.now(UTC)
        for event_id, (room_id, event, received) in list(self._pending.items()):
            decrypted = self.gateway.decrypt(event)
            if decrypted is not None:
                del self._pending[event_id]
                await in_thread(self.store.resolve_pending, event_id, PendingOutcome.DECRYPTED)
                self.metrics.undecryptable.labels("decrypted").inc()
                if self.on_decrypted is not None:
                    await self.on_decrypted(room_id, decrypted)
                continue
            if now - received >= self.grace:
                del self._pending[event_id]
                await self._report(room_id, event)

    async def _report(self, room_id: str, event: MegolmEvent) -> None:
        device = self.gateway.device_by_id(event.sender, event.device_id or "")
        await in_thread(
            self.store.resolve_pending,
            event.event_id,
            PendingOutcome.UNDECRYPTABLE,
            {"device_id": event.device_id, "session_id": event.session_id},
        )
        log.warning("%s from %s stayed unreadable; told the sender", event.event_id, event.sender)
        self.metrics.undecryptable.labels("reported").inc()
        try:
            await self.messenger.send_notice(
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
                tx_id=txn_id("undecryptable", room_id, event.event_id),
            )
        except MatrixError as exc:
            log.error("could not tell %s about an unreadable message: %s", event.sender, exc)

    async def run(self) -> None:
        """Retry held events each second until the bot stops."""
        while not self.tasks.stopping.is_set():
            try:
                if self._pending:
                    await self.retry()
            except Exception:
                log.exception("retrying undecryptable events failed")
            await self.tasks.sleep(1.0)
