"""Relay latency: officer sends a tagged message in the national room → a NATO member has the
relayed copy decrypted, against the direct path (officer sends in the NATO room → the member
has it decrypted), both measured in the same run on a throwaway Synapse.

Run with `make bench` or `python bench/relay.py [N]` (default 100 messages each way). Writes
`relay_latency_*` into bench/results.json; `relay_latency_ratio` = p50 relay ÷ (2 × p50 direct),
since a relay is two hops (officer → bot, bot → member). The set-up is bot/devtools/scenario.py's.
With `--federated` the member is on a second homeserver (federation over TLS on loopback):
both paths cross it, and the figures are `relay_federated_latency_*`.

With `--crypto-store database` the bot keeps its crypto store in PostgreSQL (issue 26, as a
high-availability pair does) and its own tables there too: the figures are
`relay_dbstore_latency_*`, beside the SQLite run's `relay_latency_*`, each with the direct
path of its own run as the baseline of its ratio. It needs a server: `--database-url` or
LIAISON_TEST_DATABASE_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test); the run
works in a schema of its own there, dropped afterwards. `--database-url` with the folder
store measures PostgreSQL for the bot's tables alone: `relay_pg_latency_*`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy.engine import make_url

from bench.common import RESULTS, percentile, record
from bot.devtools.pgschema import throwaway_schema
from bot.devtools.scenario import RELEASABLE, relay_scenario

PG_ENV = "LIAISON_TEST_DATABASE_URL"


def bench_schema(base_url: str) -> contextlib.AbstractContextManager[str]:
    """A database URL whose search_path is a new schema on `base_url`'s server; it and the
    crypto store's schema beside it are dropped afterwards."""
    return throwaway_schema(base_url, "bench")


async def measure(
    n: int,
    federated: bool = False,
    database_url: str = "sqlite:///bot.db",
    crypto_store: str = "crypto",
    suffix: str = "",
) -> dict[str, float]:
    async with relay_scenario(
        federated=federated, database_url=database_url, crypto_store=crypto_store
    ) as sc:
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
    return {
        f"relay{suffix}_latency_p50_s": round(p50_relay, 4),
        f"relay{suffix}_latency_p95_s": round(percentile(relay, 0.95), 4),
        f"direct{suffix}_latency_p50_s": round(p50_direct, 4),
        f"direct{suffix}_latency_p95_s": round(percentile(direct, 0.95), 4),
        f"relay{suffix}_latency_ratio": round(p50_relay / (2 * p50_direct), 3),
        f"relay{suffix}_latency_samples": n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", nargs="?", type=int, default=100, help="messages each way")
    parser.add_argument("--federated", action="store_true", help="the member on a 2nd server")
    parser.add_argument(
        "--crypto-store",
        choices=["folder", "database"],
        default="folder",
        help='the bot\'s crypto store: a folder (SQLite) or "database" (PostgreSQL)',
    )
    parser.add_argument(
        "--database-url",
        help=f"PostgreSQL server for the bot (default with --crypto-store database: ${PG_ENV})",
    )
    args = parser.parse_args()
    base_url = args.database_url
    if args.crypto_store == "database" and not base_url:
        base_url = os.environ.get(PG_ENV)
        if not base_url:
            parser.error(
                f"--crypto-store database needs PostgreSQL: give --database-url or set {PG_ENV} "
                "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
            )
    suffix = "_federated" if args.federated else ""
    if args.crypto_store == "database":
        suffix += "_dbstore"
    elif base_url:
        suffix += "_pg"
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(bench_schema(base_url)) if base_url else None
        crypto_store = "database" if args.crypto_store == "database" else "crypto"
        figures = asyncio.run(
            measure(
                args.n,
                federated=args.federated,
                database_url=database_url or "sqlite:///bot.db",
                crypto_store=crypto_store,
                suffix=suffix,
            )
        )
    # The machine keys as they were: relay_latency_machine and relay_federated_machine.
    machine_key = f"relay{suffix}_machine" if suffix else "relay_latency_machine"
    figures = record(figures, machine_key)
    where = f"; bot database {make_url(database_url).render_as_string()}" if database_url else ""
    print(f"machine: {figures[machine_key]}{where}, crypto store: {args.crypto_store}")
    across = " across federation" if args.federated else ""
    for name, key in (
        ("relay  (officer → bot → member)", "relay"),
        ("direct (officer → member)", "direct"),
    ):
        p50 = figures[f"{key}{suffix}_latency_p50_s"] * 1000
        p95 = figures[f"{key}{suffix}_latency_p95_s"] * 1000
        print(f"{name}{across}, decrypted: p50 {p50:.0f} ms, p95 {p95:.0f} ms")
    ratio = f"relay{suffix}_latency_ratio"
    print(
        f"{ratio} = p50 relay / (2 × p50 direct) = {figures[ratio]} (goal ≤ 1.25) "
        f"over {args.n} messages each"
    )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
