"""Relay latency: officer sends a tagged message in the national room → a NATO member has the
relayed copy decrypted, against the direct path (officer sends in the NATO room → the member
has it decrypted), both measured in the same run on a throwaway Synapse.

Run with `make bench` or `python bench/relay.py [N]` (default 100 messages each way). Writes
`relay_latency_*` into bench/results.json; `relay_latency_ratio` = p50 relay ÷ (2 × p50 direct),
since a relay is two hops (officer → bot, bot → member).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.devserver import DevServer
from tests.bot_harness import BotEnv, open_dm, talk, write_config
from tests.matrix_harness import E2EEClient, cross_sign

RESULTS = Path(__file__).resolve().parent / "results.json"
ROOMS = """
[[rooms]]
key = "deu"
name = "DEU national cell"
label = "DEU GEHEIM"

[[rooms]]
key = "nato-s"
name = "NATO SECRET liaison"
label = "NATO SECRET"

[[routes]]
from = "deu"
to = ["nato-s"]
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, DevServer(Path(tmp) / "synapse") as server:
        work = Path(tmp)
        bot_user = server.register("liaison", "pw-bot")
        admin = server.register("admin", "pw-admin")
        officer = server.register("officer", "pw-officer")
        member = server.register("member", "pw-member")
        write_config(work / "config.toml", server, bot_user, admin.user_id, officer.user_id, ROOMS)
        env = BotEnv(server, work, bot_user, admin, officer, work / "config.toml")
        await env.start()
        identities: dict = {}
        clients = []
        try:
            for user in (admin, officer, member):
                client = await E2EEClient.create(server, user, work / f"store-{user.user_id}")
                await cross_sign(server, client, identities)
                await client.start()
                clients.append(client)
            admin_c, officer_c, member_c = clients
            dm = await open_dm(admin_c, bot_user.user_id)
            for user_id, level, nation in (
                (officer.user_id, "DEU GEHEIM", "DEU"),
                (officer.user_id, "NATO SECRET", "DEU"),
                (member.user_id, "NATO SECRET", "NOR"),
            ):
                await talk(
                    admin_c,
                    dm,
                    f'!clearance grant {user_id} "{level}" --nationality {nation}',
                    "Clearance updated",
                )
            for client, key in ((officer_c, "deu"), (officer_c, "nato-s"), (member_c, "nato-s")):
                await talk(admin_c, dm, f"!invite {client.user_id} {key}", "Invited")
                await client.join(await client.wait_for_invite())
            deu, nato_s = env.room_id("deu"), env.room_id("nato-s")
            # warm up both paths (room keys shared, olm sessions set up)
            for i in range(3):
                await officer_c.send_text(nato_s, f"warm-direct-{i}")
                await member_c.wait_for_text(nato_s, f"warm-direct-{i}", timeout=60)
                await officer_c.send_text(deu, f"[GEHEIM // REL TO NATO] warm-relay-{i}")
                await member_c.wait_for_text(nato_s, f"warm-relay-{i}", timeout=60)
            direct: list[float] = []
            relay: list[float] = []
            for i in range(n):
                mark = member_c.event_count(nato_s)
                began = time.perf_counter()
                await officer_c.send_text(nato_s, f"direct-{i}-")
                await member_c.wait_for_text(nato_s, f"direct-{i}-", timeout=60, after=mark)
                direct.append(time.perf_counter() - began)
                mark = member_c.event_count(nato_s)
                began = time.perf_counter()
                await officer_c.send_text(deu, f"[GEHEIM // REL TO NATO] relay-{i}-")
                await member_c.wait_for_text(nato_s, f"relay-{i}-", timeout=60, after=mark)
                relay.append(time.perf_counter() - began)
        finally:
            await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
            await env.stop()
    p50_direct, p50_relay = statistics.median(direct), statistics.median(relay)
    return {
        "relay_latency_p50_s": round(p50_relay, 4),
        "relay_latency_p95_s": round(percentile(relay, 0.95), 4),
        "direct_latency_p50_s": round(p50_direct, 4),
        "direct_latency_p95_s": round(percentile(direct, 0.95), 4),
        "relay_latency_ratio": round(p50_relay / (2 * p50_direct), 3),
        "relay_latency_samples": n,
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    figures = asyncio.run(measure(n))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(figures)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    for name, key in (
        ("relay  (officer → bot → member)", "relay"),
        ("direct (officer → member)", "direct"),
    ):
        p50, p95 = figures[f"{key}_latency_p50_s"] * 1000, figures[f"{key}_latency_p95_s"] * 1000
        print(f"{name}, decrypted: p50 {p50:.0f} ms, p95 {p95:.0f} ms")
    print(
        f"relay_latency_ratio = p50 relay / (2 × p50 direct) = {figures['relay_latency_ratio']} "
        f"(goal ≤ 1.25) over {n} messages each"
    )


if __name__ == "__main__":
    main()
