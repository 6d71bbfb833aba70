"""Prometheus metrics and a health check, on an optional loopback listener ([metrics] bind).

Each bot has its own registry (no process globals), so tests and several bots in one process
never mix their counters.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

HEALTHY_SYNC_AGE_S = 90.0  # a long-poll sync returns within 30 s; three missed is unhealthy


@dataclass(frozen=True)
class HaView:
    """What /healthz and the metrics say of this node's part in a pair."""

    role: str  # "single" (no pair), "active", "standby", "fenced"
    node: str | None
    epoch: int
    ready: bool


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
        # National release control: items held for a second officer, and how long a
        # decision took (held -> approved, denied or expired).
        self.release_pending = Gauge(
            "liaison_release_pending",
            "Release requests with a target still waiting for a second officer",
            registry=self.registry,
        )
        self.release_decision = Histogram(
            "liaison_release_decision_seconds",
            "Held for release approval to decided (approved, denied or expired)",
            buckets=(10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400),
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
        # High availability (bot/ha.py): which role this process has, under which epoch.
        self.ha_role = Gauge(
            "liaison_ha_role",
            "1 for this process's role (active, standby, fenced), 0 for the others",
            ["role"],
            registry=self.registry,
        )
        self.ha_epoch = Gauge(
            "liaison_ha_epoch", "The lease epoch this process acts under", registry=self.registry
        )
        self.ha_takeovers = Counter(
            "liaison_ha_takeovers_total",
            "Times this process took the lease",
            registry=self.registry,
        )
        self.ha_takeover_seconds = Histogram(
            "liaison_ha_takeover_seconds",
            "From taking the lease to the first sync handled as the active",
            buckets=(0.25, 0.5, 1, 2, 3, 5, 8, 13, 30),
            registry=self.registry,
        )
        self.ha_fenced = Counter(
            "liaison_ha_fenced_total",
            "Homeserver requests refused because this process does not hold the lease",
            registry=self.registry,
        )
        # The audit export to the SOC's SIEM (bot/siem/exporter.py); -1 where no exporter
        # runs (no [siem], a standby), so a dashboard cannot take that for "caught up".
        self.siem_lag = Gauge(
            "liaison_siem_lag_rows",
            "Audit rows written and not yet confirmed by the SIEM (-1: no exporter runs)",
            registry=self.registry,
        )
        self.siem_last_delivery = Gauge(
            "liaison_siem_last_delivery_seconds",
            "Seconds since the SIEM last confirmed a batch, or the exporter last found nothing "
            "waiting: how long the audit has not been reaching the SOC (-1: no exporter runs)",
            registry=self.registry,
        )
        self.watch_siem(lambda: -1.0, lambda: -1.0)
        self._ha: Callable[[], HaView] = lambda: HaView("single", None, 0, True)
        for role in ("active", "standby", "fenced"):
            self.ha_role.labels(role).set_function(functools.partial(self._is_role, role))
        self.ha_epoch.set_function(lambda: self._ha().epoch)

    def _is_role(self, role: str) -> float:
        return 1.0 if self._ha().role == role else 0.0

    def watch_ha(self, view: Callable[[], HaView]) -> None:
        """Report this node's role (a process that is not part of a pair reports "single")."""
        self._ha = view

    def watch_siem(self, lag_rows: Callable[[], float], delivery_age: Callable[[], float]) -> None:
        """Report the SIEM exporter's figures (read at each scrape, never from the database:
        the exporter keeps them)."""
        self.siem_lag.set_function(lag_rows)
        self.siem_last_delivery.set_function(delivery_age)

    def healthy(self) -> bool:
        age = self._sync_age()
        return age is not None and age < HEALTHY_SYNC_AGE_S

    def health(self) -> tuple[int, dict[str, Any]]:
        """/healthz: 200 for an active that syncs and for a ready standby; the body names
        the role, so a look tells which node acts."""
        ha = self._ha()
        age = self._sync_age()
        body: dict[str, Any] = {"role": ha.role, "epoch": ha.epoch, "node": ha.node}
        if ha.role == "standby":
            return (200 if ha.ready else 503), {**body, "ready": ha.ready}
        syncing = self.healthy()
        body["sync_age_s"] = None if age is None else round(age, 1)
        return (200 if syncing and ha.role != "fenced" else 503), body

    def active(self) -> bool:
        """/healthz/active: only the node that acts (for the feed listener's balancer)."""
        return self._ha().role in ("active", "single") and self.healthy()

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


def bound_port(runner: web.AppRunner) -> int:
    """The port a started listener holds (the one asked for, or the one port 0 got)."""
    return int(runner.addresses[0][1])


async def serve(metrics: Metrics, bind: str) -> web.AppRunner:
    """/metrics (Prometheus text format), /healthz (JSON naming the role: 200 for an active
    that syncs and a ready standby) and /healthz/active (200 only on the node that acts)."""

    async def scrape(_: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        status, body = metrics.health()
        return web.json_response(body, status=status)

    async def healthz_active(_: web.Request) -> web.Response:
        if metrics.active():
            return web.json_response({"active": True})
        return web.json_response({"active": False}, status=503)

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/healthz/active", healthz_active)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = bind.rpartition(":")
    await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    log.info("metrics on http://%s:%d/metrics", host, bound_port(runner))
    return runner
