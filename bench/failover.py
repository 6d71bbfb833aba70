"""Failover of a high-availability pair: kill -9 of the active while an officer streams tagged
messages, K times (default 5), on a throwaway Synapse and a fresh schema of a PostgreSQL.

Each round: the officer streams messages into the national room; once a few are relayed the
active is killed; the time from the kill to the first relayed copy the new active sends (seen
at its own proxy to the homeserver) is the takeover time; the killed node is started again
and stands by for the next round. At the end every message must have reached the NATO member
exactly once and readable.

Run with `make bench` or `python bench/failover.py [K] [--database-url URL]` (default: the
LIAISON_TEST_DATABASE_URL or LIAISON_BENCH_DATABASE_URL variable). Writes `ha_takeover_p50_s`,
`ha_takeover_max_s`, `ha_lost`, `ha_duplicated`, `ha_undecryptable` and `ha_kills` into
bench/results.json; without a PostgreSQL it says so and writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, record
from bench.relay import bench_schema
from bot.devtools.devserver import DevServer, RegisteredUser
from bot.devtools.e2ee_client import E2EEClient, cross_sign
from bot.devtools.hapair import HaPair, ha_pair

MARKING = "[GEHEIM // REL TO NATO]"
PER_ROUND = 12


async def one_round(pair: HaPair, round_no: int, tag: str) -> tuple[float, list[str]]:
    """Stream, kill the active mid-stream, restart it as a standby; the takeover time and
    the phrases sent."""
    active = pair.active()
    standby = next(n for n in pair.nodes.values() if n is not active)
    phrases = [f"f{tag}-{round_no}-{i:02d}-end" for i in range(PER_ROUND)]

    async def stream() -> None:
        for phrase in phrases:
            await pair.officer.send_text(pair.deu, f"{MARKING} {phrase}")
            await asyncio.sleep(0.05)  # a steady stream, not a wait for anything

    streaming = asyncio.create_task(stream())
    await pair.member.wait_for_text(pair.nato_s, phrases[3], timeout=120)
    since = len(standby.text())
    active.signal(signal.SIGKILL)
    killed = time.monotonic()
    await active.exit_code()
    await pair.wait_active(standby, since=since, timeout=60)
    await streaming
    deadline = time.monotonic() + 60
    while not standby.proxy.sends(pair.nato_s, since=killed) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    sends = standby.proxy.sends(pair.nato_s, since=killed)
    if not sends:
        raise SystemExit(f"round {round_no}: the new active sent no copy within 60 s")
    since = len(active.text())
    active.start()
    await active.wait_for_log(f"node {active.name} standing by", since=since)
    return sends[0] - killed, phrases


async def measure(kills: int, database_url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, DevServer(Path(tmp) / "synapse") as server:
        counter = itertools.count(1)
        identities: dict[str, Any] = {}
        clients: list[E2EEClient] = []

        def make_user(prefix: str) -> RegisteredUser:
            return server.register(f"{prefix}-{next(counter)}", f"pw-{secrets.token_hex(8)}")

        async def make_client(user: RegisteredUser) -> E2EEClient:
            client = await E2EEClient.create(server, user, Path(tmp) / f"store-{user.user_id}")
            await cross_sign(server, client, identities)
            await client.start()
            clients.append(client)
            return client

        try:
            async with ha_pair(Path(tmp) / "pair", server, make_user, make_client,
                               database_url) as pair:  # fmt: skip
                tag = secrets.token_hex(3)
                takeovers: list[float] = []
                phrases: list[str] = []
                for round_no in range(kills):
                    seconds, sent = await one_round(pair, round_no, tag)
                    takeovers.append(seconds)
                    phrases += sent
                    print(f"kill {round_no + 1}: takeover {seconds:.2f} s", flush=True)
                lost = 0
                for phrase in phrases:
                    try:
                        await pair.member.wait_for_text(pair.nato_s, phrase, timeout=60)
                    except (AssertionError, TimeoutError):
                        lost += 1
                # A last message relayed after all the others: once it is read, any second
                # copy of an earlier one would have arrived before it.
                await pair.officer.send_text(pair.deu, f"{MARKING} f{tag}-barrier")
                await pair.member.wait_for_text(pair.nato_s, f"f{tag}-barrier", timeout=60)
                texts = pair.member.texts(pair.nato_s)
                duplicated = sum(max(0, sum(p in t for t in texts) - 1) for p in phrases)
                undecryptable = len(pair.member.undecryptable(pair.nato_s))
        finally:
            await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
    return {
        "ha_takeover_p50_s": round(statistics.median(takeovers), 3),
        "ha_takeover_max_s": round(max(takeovers), 3),
        "ha_kills": kills,
        "ha_messages": len(phrases),
        "ha_lost": lost,
        "ha_duplicated": duplicated,
        "ha_undecryptable": undecryptable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kills", type=int, nargs="?", default=5)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("LIAISON_BENCH_DATABASE_URL")
        or os.environ.get("LIAISON_TEST_DATABASE_URL"),
    )
    args = parser.parse_args()
    if not args.database_url:
        print("failover: skipped, no PostgreSQL: set LIAISON_BENCH_DATABASE_URL or --database-url")
        return
    with bench_schema(args.database_url) as url:
        figures = asyncio.run(measure(args.kills, url))
    print(record(figures))
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
