"""Prometheus metrics and a health check, on an optional loopback listener ([metrics] bind).

Each bot has its own registry (no process globals), so tests and several bots in one process
never mix their counters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

HEALTHY_SYNC_AGE_S = 90.0  # a long-poll sync returns within 30 s; three missed is unhealthy


class Metrics:
    def __init__(self, sync_age: Callable[[], float | None]) -> None:
        self.registry = CollectorRegistry()
        self.relays = Counter(
            "liaison_relays_total",
            "Tagged messages by relay result",
            ["result"],
            registry=self.registry,
        )
        self.relay_latency = Histogram(
            "liaison_relay_latency_seconds",
            "Source event to relayed copy accepted",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.invites = Counter(
            "liaison_invites_total", "Invites by result", ["result"], registry=self.registry
        )
        self.digests = Counter(
            "liaison_digests_total", "Digests by outcome", ["outcome"], registry=self.registry
        )
        self.undecryptable = Counter(
            "liaison_undecryptable_events_total",
            "Undecryptable events by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.key_requests = Counter(
            "liaison_room_key_requests_total",
            "Room key requests from other users' devices: answered, ignored, or dropped unread "
            "(backlog full)",
            ["outcome"],
            registry=self.registry,
        )
        self.events_failed = Counter(
            "liaison_events_failed",
            "Events whose handling failed and that were isolated (audited, skipped), so the "
            "sync went on",
            registry=self.registry,
        )
        self.sync_lag = Gauge(
            "liaison_sync_lag_seconds",
            "Seconds since the last completed sync",
            registry=self.registry,
        )
        self.sync_lag.set_function(lambda: sync_age() or -1.0)
        self._sync_age = sync_age

    def healthy(self) -> bool:
        age = self._sync_age()
        return age is not None and age < HEALTHY_SYNC_AGE_S

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


def bound_port(runner: web.AppRunner) -> int:
    """The port a started listener holds (the one asked for, or the one port 0 got)."""
    return int(runner.addresses[0][1])


async def serve(metrics: Metrics, bind: str) -> web.AppRunner:
    """/metrics (Prometheus text format) and /healthz (200 only while syncing)."""

    async def scrape(_: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        if metrics.healthy():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not syncing\n")

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = bind.rpartition(":")
    await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    log.info("metrics on http://%s:%d/metrics", host, bound_port(runner))
    return runner
