"""Running the bot as a process: migrate, start, wait for a signal, stop cleanly; and, in a
high-availability pair ([ha] enabled), wait as a standby first and take over when the active
is gone (README "High availability").

The takeover sequence, each step before the next:
take the lease → end the old holder's database sessions → open connections with the new
epoch → start the bot as usual (load the crypto store, restore the login and cross-signing,
restore rooms from their snapshots and sync from the stored token, resend what is pending,
re-drive claimed digests, then scheduler, sweep and feeds) → audit it and tell the admins.

Part of the composition root (it builds `LiaisonBot`), kept apart so `bot/app.py` stays the
wiring only.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

from bot.app import LiaisonBot
from bot.config import Config
from bot.ha import HaNode, Role
from bot.metrics import HaView
from bot.startup import Secrets, StartupError
from bot.storage import Store, schema_is_current
from bot.storage.models import SCHEMA_HEAD
from bot.storage.rotate import unfinished as unfinished_rotation
from bot.storage.runlock import StoreBusy, hold_run_lock
from commands.document import doc, para

log = logging.getLogger(__name__)


async def run_bot(
    config: Config, secrets: Secrets, *, ready: Callable[[LiaisonBot], None] | None = None
) -> None:
    """Run until SIGINT/SIGTERM: hold the store (one process per store, outside a pair),
    migrate the database, start (or stand by), stop cleanly."""
    url = config.database_url()
    lock = None
    if not config.ha.enabled:  # a pair's lease decides which node acts
        try:
            lock = await asyncio.to_thread(hold_run_lock, url)
        except StoreBusy as exc:
            raise StartupError(str(exc)) from None
    try:
        await _migrate(url)
        await _run(config, secrets, url, ready)
    finally:
        if lock is not None:
            lock.release()


async def _migrate(url: str) -> None:
    """Bring the schema to head; one line says where it is (Alembic's own lines are held
    back: bot/logsetup.py)."""
    if await asyncio.to_thread(schema_is_current, url):
        log.info("database at revision %s", SCHEMA_HEAD)
        return
    from bot.storage.migrate import upgrade  # Alembic, only when there is work for it

    revision = await asyncio.to_thread(upgrade, url)
    log.info("database at revision %s (upgraded)", revision)


async def _run(
    config: Config, secrets: Secrets, url: str, ready: Callable[[LiaisonBot], None] | None
) -> None:
    node = HaNode(config) if config.ha.enabled else None
    store = Store.from_url(url, connect_params=node.connect_params if node else None)
    cut_off = [which for which in ("data", "pickle") if unfinished_rotation(store, which)]
    if cut_off:  # some values are sealed under the new key, some under the old: neither works
        store.close()
        raise StartupError(
            f"a rotation of the {' and '.join(cut_off)} key was cut off: finish it with "
            f"`liaison-bot keys rotate --{cut_off[0]} …` (the same new key) before starting. "
            "If nobody started a rotation, its keys.rotating audit entry was written into the "
            "database by someone else: run `liaison-bot audit verify` and treat the database "
            "as tampered with if it does not say intact"
        )
    if node is None:
        bot = LiaisonBot(config, store, secrets)
    else:
        bot = LiaisonBot(config, store, secrets, node.gate, node.connect_params)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, bot.request_stop)
    try:
        if node is None:
            await bot.start()
        elif not await _take_over(bot, node, store):
            return  # stopped while a standby
        if bot.tasks.stopping.is_set():
            return  # stopped while waiting for the homeserver
        if ready is not None:
            ready(bot)
        await bot.tasks.stopping.wait()
    finally:
        await bot.close()
        if node is not None:
            await asyncio.to_thread(node.release)  # after the last write: a standby may act
        store.close()


async def _take_over(bot: LiaisonBot, node: HaNode, store: Store) -> bool:
    """Stand by until the lease is ours, then become the active; False if asked to stop
    first."""

    def view() -> HaView:
        status = node.status
        return HaView(str(status.role), status.node, status.epoch, status.ready)

    bot.metrics.watch_ha(view)
    await bot.serve_metrics()
    log.info("node %s standing by", node.node)
    takeover = await node.wait_for_lease(bot.tasks.stopping)
    if takeover is None:
        return False
    started = time.monotonic()
    node.keep()
    ended = await asyncio.to_thread(node.end_previous)
    # Connections opened as a standby carry epoch 0 (the fence refuses their writes): they
    # go, and every new one carries this node's epoch.
    store.engine.dispose()
    await bot.start()
    synced = asyncio.ensure_future(bot.synced.wait())
    stopping = asyncio.ensure_future(bot.tasks.stopping.wait())
    await asyncio.wait([synced, stopping], return_when=asyncio.FIRST_COMPLETED)
    for waiter in (synced, stopping):
        waiter.cancel()
    if not bot.synced.is_set():
        return True  # asked to stop before the first sync: the caller stops
    seconds = time.monotonic() - started
    bot.metrics.ha_takeovers.inc()
    bot.metrics.ha_takeover_seconds.observe(seconds)
    previous = takeover.previous
    await bot.audit(
        "liaison-bot",
        "ha.takeover",
        node.node,
        {
            "epoch": takeover.epoch,
            "previous": previous.holder if previous else None,
            "previous_epoch": previous.epoch if previous else None,
            "sessions_ended": ended,
            "seconds": round(seconds, 3),
        },
    )
    if previous is not None and node.status.role is Role.ACTIVE:
        await bot.messenger.alert_admins(
            doc(
                para(
                    f"Node {node.node} took over from node {previous.holder} "
                    f"(epoch {takeover.epoch}) in {seconds:.1f} s."
                )
            )
        )
    log.warning("node %s active, epoch %d, %.2f s after taking the lease", node.node,
                takeover.epoch, seconds)  # fmt: skip
    return True
