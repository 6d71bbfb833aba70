"""The metrics listener: Prometheus text, and /healthz 200 only while syncing; and what a fresh
bot counts, exactly, for what it was asked to do."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

from bot.devtools.botenv import rooms_config
from bot.metrics import HaView, Metrics, bound_port, serve
from tests.bot_harness import BotEnv, enrol, open_dm, talk
from tests.matrix_harness import MakeClient

BOT_EXTRA_CONFIG = """
[metrics]
bind = "127.0.0.1:0"
"""
# deu relays to nato-s and eu-s (so a NATO-only item is sent once and refused once); nato-r,
# a NATO RESTRICTED room, is where a NATO SECRET message is a spillage.
BOT_ROOMS = rooms_config("eu-s", "nato-r", relay_to=("nato-s", "eu-s"))


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def health(base: str, path: str = "/healthz") -> tuple[int, Any]:
    status, body = await asyncio.to_thread(fetch, base + path)
    return status, json.loads(body)


async def test_healthz_follows_the_sync_age_and_metrics_are_per_bot() -> None:
    age: list[float | None] = [None]
    metrics = Metrics(lambda: age[0])
    other = Metrics(lambda: 1.0)
    other.relays.labels("sent").inc(5)
    runner = await serve(metrics, "127.0.0.1:0")  # any free port, held from the bind on
    try:
        base = f"http://127.0.0.1:{bound_port(runner)}"
        single = {"role": "single", "epoch": 0, "node": None}
        assert await health(base) == (503, {**single, "sync_age_s": None})
        assert await health(base, "/healthz/active") == (503, {"active": False})
        age[0] = 2.0
        assert await health(base) == (200, {**single, "sync_age_s": 2.0})
        assert await health(base, "/healthz/active") == (200, {"active": True})
        age[0] = 600.0
        assert (await health(base))[0] == 503
        # A pair's standby: 200 while ready, never "active"; a fenced node: 503.
        metrics.watch_ha(lambda: HaView("standby", "b", 0, True))
        assert await health(base) == (200, {"role": "standby", "epoch": 0, "node": "b",
                                            "ready": True})  # fmt: skip
        assert (await health(base, "/healthz/active"))[0] == 503
        age[0] = 2.0
        metrics.watch_ha(lambda: HaView("fenced", "a", 7, False))
        assert (await health(base))[0] == 503
        assert (await health(base, "/healthz/active"))[0] == 503
        metrics.watch_ha(lambda: HaView("active", "a", 8, True))
        assert await health(base) == (200, {"role": "active", "epoch": 8, "node": "a",
                                            "sync_age_s": 2.0})  # fmt: skip
        assert (await health(base, "/healthz/active"))[0] == 200
        age[0] = 600.0
        metrics.relays.labels("sent").inc()
        status, text = await asyncio.to_thread(fetch, base + "/metrics")
        assert status == 200 and 'liaison_relays_total{result="sent"} 1.0' in text
        assert "liaison_sync_lag_seconds 600.0" in text
        assert 'liaison_ha_role{role="active"} 1.0' in text and "liaison_ha_epoch 8.0" in text
    finally:
        await runner.cleanup()


async def test_a_fresh_bot_counts_exactly_what_it_did(
    bot_env: BotEnv, make_client: MakeClient
) -> None:
    """This module's own bot, new for it: two invites, one item relayed to nato-s and refused
    for eu-s, one spillage; the counters say exactly that."""
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    officer = await make_client(bot_env.officer)
    officer_id = bot_env.officer.user_id
    deu, nato_r = await enrol(
        (admin, dm),
        [(officer_id, "DEU GEHEIM", "DEU"), (officer_id, "NATO SECRET", "DEU")],
        [(officer, "deu"), (officer, "nato-r")],
    )
    receipt = await talk(
        officer, deu, "[GEHEIM // REL TO NATO] for the metrics", "Relayed to nato-s"
    )
    assert "Not relayed to eu-s" in receipt.body
    await officer.send_text(nato_r, "[NATO SECRET] spilled")
    await officer.wait_for_text(nato_r, "removed from this room")

    assert bot_env.bot is not None
    base = f"http://127.0.0.1:{bot_env.bot.metrics_port}"  # the port bind's port 0 got
    status, text = await asyncio.to_thread(fetch, f"{base}/metrics")
    assert status == 200
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }

    def family(name: str) -> dict[str, float]:
        return {k: v for k, v in samples.items() if k.startswith(name + "{")}

    assert family("liaison_relays_total") == {
        'liaison_relays_total{result="sent"}': 1,  # the copy in nato-s
        'liaison_relays_total{result="refused"}': 1,  # eu-s: not releasable to all the EU
        'liaison_relays_total{result="spillage"}': 1,  # the NATO SECRET message in nato-r
    }
    assert samples["liaison_relay_latency_seconds_count"] == 1  # one copy sent
    assert family("liaison_invites_total") == {'liaison_invites_total{result="invited"}': 2}
    assert 0 <= samples["liaison_sync_lag_seconds"] < 60
    status, body = await health(base)
    assert status == 200 and body["role"] == "single"
