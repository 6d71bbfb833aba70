"""The crypto store's loads and trust checks: the folder store (nio's SQLite file, the bot's
PrivateStore) against the store in PostgreSQL (bot/matrix/dbstore.py, issue 26).

`python bench/cryptostore.py [SESSIONS] [CHECKS]` (default 3 000 room keys, each with a
one-key forwarding chain, and 300 trust checks: 100 devices, each asked verified, blacklisted
and ignored, as nio asks before it shares a room key). Writes `cryptostore_*` into
bench/results.json: the time a fresh store takes to load the room keys
(`…_load_inbound_s`) and, after nio's load of the device keys, to answer the checks
(`…_trust_checks_ms`). The database half needs a server: `--database-url` or
LIAISON_TEST_DATABASE_URL; it works in a schema of its own there, dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nio.crypto import InboundGroupSession, OlmAccount, OlmDevice, OutboundGroupSession

from bench.common import RESULTS, record
from bench.relay import PG_ENV, bench_schema
from bot.matrix.cryptostore import PrivateStore
from bot.matrix.dbstore import DatabaseStore
from bot.storage.migrate import upgrade

USER, DEVICE, PICKLE_KEY = "@bench:example.org", "BENCHDEVICE", "bench-pickle-key"


def fill(store: Any, sessions: int, devices: list[OlmDevice]) -> None:
    store.save_account(OlmAccount())
    for i in range(sessions):
        outbound = OutboundGroupSession()
        store.save_inbound_group_session(
            InboundGroupSession(
                outbound.session_key, "ed", f"curve-{i % 20}", f"!r{i % 50}:x", [f"fwd-{i}"]
            )
        )
    store.save_device_keys({d.user_id: {d.id: d} for d in devices})
    for device in devices[::2]:
        store.verify_device(device)


def measure(open_store: Any, sessions: int, checks: int) -> tuple[float, float]:
    devices = [
        OlmDevice(f"@p{i}:x", f"D{i}", {"ed25519": f"e{i}", "curve25519": f"c{i}"})
        for i in range(checks // 3)
    ]
    first = open_store()
    try:
        fill(first, sessions, devices)
    finally:
        first.database.close()
    store = open_store()
    try:
        began = time.perf_counter()
        loaded = list(store.load_inbound_group_sessions())
        load = time.perf_counter() - began
        assert len(loaded) == sessions
        known = store.load_device_keys()
        asked = [known[d.user_id][d.id] for d in devices]
        began = time.perf_counter()
        for device in asked:
            store.is_device_verified(device)
            store.is_device_blacklisted(device)
            store.is_device_ignored(device)
        trust = time.perf_counter() - began
    finally:
        store.database.close()
    return load, trust


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sessions", nargs="?", type=int, default=3000)
    parser.add_argument("checks", nargs="?", type=int, default=300)
    parser.add_argument("--database-url", default=os.environ.get(PG_ENV))
    args = parser.parse_args()
    if not args.database_url:
        parser.error(
            f"the database store needs PostgreSQL: give --database-url or set {PG_ENV} "
            "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
        )
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        load, trust = measure(
            lambda: PrivateStore(USER, DEVICE, folder, PICKLE_KEY), args.sessions, args.checks
        )
    figures["cryptostore_folder_load_inbound_s"] = round(load, 3)
    figures["cryptostore_folder_trust_checks_ms"] = round(trust * 1000, 2)
    with bench_schema(args.database_url) as url:
        upgrade(url)
        load, trust = measure(
            lambda: DatabaseStore(USER, DEVICE, "", PICKLE_KEY, database_url=url),
            args.sessions,
            args.checks,
        )
    figures["cryptostore_database_load_inbound_s"] = round(load, 3)
    figures["cryptostore_database_trust_checks_ms"] = round(trust * 1000, 2)
    figures["cryptostore_sessions"] = args.sessions
    figures["cryptostore_trust_checks"] = args.checks
    figures = record(figures, "cryptostore_machine")
    print(f"machine: {figures['cryptostore_machine']}")
    for kind in ("folder", "database"):
        print(
            f"{kind:8}: {args.sessions} room keys loaded in "
            f"{figures[f'cryptostore_{kind}_load_inbound_s'] * 1000:.0f} ms; "
            f"{args.checks} trust checks in {figures[f'cryptostore_{kind}_trust_checks_ms']} ms"
        )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
