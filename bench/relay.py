"""Relay latency: officer sends a tagged message in the national room → a NATO member has the
relayed copy decrypted, against the direct path (officer sends in the NATO room → the member
has it decrypted), both measured in the same run on a throwaway Synapse.

Run with `make bench` or `python bench/relay.py [N]` (default 100 messages each way). Writes
`relay_latency_*` into bench/results.json; `relay_latency_ratio` = p50 relay ÷ (2 × p50 direct),
since a relay is two hops (officer → bot, bot → member). The set-up is bot/devtools/scenario.py's.
With `--federated` the member is on a second homeserver (federation over TLS on loopback):
both paths cross it, and the figures are `relay_federated_latency_*`.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, percentile, record
from bot.devtools.scenario import RELEASABLE, relay_scenario


async def measure(n: int, federated: bool = False) -> dict[str, float]:
    async with relay_scenario(federated=federated) as sc:
        officer_c, member_c, deu, nato_s = sc.officer, sc.member, sc.deu, sc.nato_s
        await sc.warm_up()
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
            await officer_c.send_text(deu, f"{RELEASABLE} relay-{i}-")
            await member_c.wait_for_text(nato_s, f"relay-{i}-", timeout=60, after=mark)
            relay.append(time.perf_counter() - began)
    p50_direct, p50_relay = statistics.median(direct), statistics.median(relay)
    if federated:
        return {
            "relay_federated_latency_p50_s": round(p50_relay, 4),
            "relay_federated_latency_p95_s": round(percentile(relay, 0.95), 4),
            "direct_federated_latency_p50_s": round(p50_direct, 4),
            "direct_federated_latency_p95_s": round(percentile(direct, 0.95), 4),
            "relay_federated_latency_ratio": round(p50_relay / (2 * p50_direct), 3),
            "relay_federated_latency_samples": n,
        }
    return {
        "relay_latency_p50_s": round(p50_relay, 4),
        "relay_latency_p95_s": round(percentile(relay, 0.95), 4),
        "direct_latency_p50_s": round(p50_direct, 4),
        "direct_latency_p95_s": round(percentile(direct, 0.95), 4),
        "relay_latency_ratio": round(p50_relay / (2 * p50_direct), 3),
        "relay_latency_samples": n,
    }


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--federated"]
    n = int(args[0]) if args else 100
    if "--federated" in sys.argv[1:]:
        figures = record(asyncio.run(measure(n, federated=True)), "relay_federated_machine")
        print(f"machine: {figures['relay_federated_machine']}")
        for name, key in (("relay ", "relay_federated"), ("direct", "direct_federated")):
            p50 = figures[f"{key}_latency_p50_s"] * 1000
            p95 = figures[f"{key}_latency_p95_s"] * 1000
            print(f"{name} across federation, decrypted: p50 {p50:.0f} ms, p95 {p95:.0f} ms")
        print(f"relay_federated_latency_ratio = {figures['relay_federated_latency_ratio']}")
        print(f"written to {RESULTS}")
        return
    figures = record(asyncio.run(measure(n)), "relay_latency_machine")
    print(f"machine: {figures['relay_latency_machine']}")
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
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
