"""The metrics listener: Prometheus text, and /healthz 200 only while syncing."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

from bot.devtools.devserver import free_port
from bot.metrics import Metrics, serve


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_healthz_follows_the_sync_age_and_metrics_are_per_bot() -> None:
    age: list[float | None] = [None]
    metrics = Metrics(lambda: age[0])
    other = Metrics(lambda: 1.0)
    other.relays.labels("sent").inc(5)
    port = free_port()
    runner = await serve(metrics, f"127.0.0.1:{port}")
    try:
        base = f"http://127.0.0.1:{port}"
        assert await asyncio.to_thread(fetch, base + "/healthz") == (503, "not syncing\n")
        age[0] = 2.0
        assert await asyncio.to_thread(fetch, base + "/healthz") == (200, "ok\n")
        age[0] = 600.0
        assert (await asyncio.to_thread(fetch, base + "/healthz"))[0] == 503
        metrics.relays.labels("sent").inc()
        status, text = await asyncio.to_thread(fetch, base + "/metrics")
        assert status == 200 and 'liaison_relays_total{result="sent"} 1.0' in text
        assert "liaison_sync_lag_seconds 600.0" in text
    finally:
        await runner.cleanup()
