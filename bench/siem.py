"""Audit export throughput against a real rsyslog (issue 27): `siem_events_per_s`.

`python bench/siem.py [ROWS] [--batch N] [--database-url URL]` (default 20 000 rows, batches
of 200, SQLite). With `--database-url` (PostgreSQL) the figures are
`siem_pg_*`. ROWS audit rows are written first; then the exporter (bot/siem: rendering,
RFC 5424 framing, one TLS connection per batch confirmed by close_notify, the cursor moved
under its row lock) is started against rsyslog on loopback (bot/devtools/rsyslog.py: the
ossl driver, a Direct queue, omfile), and timed from its start until the cursor stands at
the last row. Checks that rsyslog wrote every row once, then writes `siem_events_per_s`
(rows per second), `siem_batch_ms_p50` (one batch: connect, handshake, write, confirm) and
the machine into bench/results.json. Needs rsyslogd and rsyslog-openssl.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, percentile, record
from bot.devtools.rsyslog import Rsyslog, missing
from bot.devtools.testca import TestCA
from bot.siem.exporter import Exporter, ExportSettings
from bot.siem.syslog import Origin
from bot.siem.transport import Confirmation, TlsSyslog, TlsTarget
from bot.siem.wiring import formatter
from bot.storage import Store, append_audit, audit_key_from
from bot.storage.migrate import upgrade
from commands.document import Document


class TimedReceiver(TlsSyslog):
    """The real transport, each delivery timed."""

    def __init__(self, target: TlsTarget) -> None:
        super().__init__(target)
        self.batches_ms: list[float] = []

    async def deliver(self, payload: bytes) -> Confirmation:
        started = time.perf_counter()
        how = await super().deliver(payload)
        self.batches_ms.append((time.perf_counter() - started) * 1000)
        return how


def fill(store: Store, rows: int) -> None:
    """Rows like the bot's: an actor, an action, a subject and a small detail."""
    for start in range(0, rows, 1000):
        with store.session() as session:
            for n in range(start, min(rows, start + 1000)):
                append_audit(
                    session,
                    "@lo-deu:example.org",
                    "relay.sent",
                    f"$event{n}:example.org",
                    {"room": "nato-s", "target": "!room:example.org", "label": "NATO SECRET"},
                )


async def export(
    store: Store, receiver: Rsyslog, ca: Path, batch: int
) -> tuple[float, list[float]]:
    from bot.siem import syslog_severity

    async def alert(_: Document) -> None:
        raise RuntimeError("the receiver failed during the benchmark")

    transport = TimedReceiver(TlsTarget("127.0.0.1", receiver.port, "localhost", ca))
    exporter = Exporter(
        ExportSettings(target=f"127.0.0.1:{receiver.port}", batch=batch, alert_after=1.0),
        store,
        transport,
        formatter("ocsf", "level"),
        syslog_severity,
        Origin.local(),
        alert,
    )
    last = store.recent_audit(1)[0].id
    started = time.perf_counter()
    task = asyncio.ensure_future(exporter.run())
    try:
        while True:
            cursor = await asyncio.to_thread(store.siem_cursor)
            if cursor and cursor.position and cursor.position.last_id >= last:
                break
            if cursor and cursor.failures:
                raise RuntimeError(f"delivery failed: {cursor.last_error}")
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return elapsed, transport.batches_ms


def run(url: str, folder: Path, rows: int, batch: int) -> tuple[float, list[float]]:
    upgrade(url)
    store = Store.from_url(url, audit_key_from("bench-data-key" * 3))
    ca = TestCA.create(folder / "ca")
    receiver = Rsyslog(folder / "rsyslog", *ca.issue("server", folder / "certs"), ca.ca_path)
    receiver.start()
    try:
        fill(store, rows)
        elapsed, batches = asyncio.run(export(store, receiver, ca.ca_path, batch))
        received = receiver.lines()
    finally:
        receiver.stop()
        store.close()
    if len(received) != rows or len(set(received)) != rows:
        raise SystemExit(f"rsyslog holds {len(received)} lines, expected {rows} distinct")
    return elapsed, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=int, nargs="?", default=20_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to run on (in a schema of its own, dropped afterwards); "
        "default: a SQLite file in a temporary folder",
    )
    args = parser.parse_args()
    reason = missing()
    if reason is not None:
        raise SystemExit(f"bench/siem.py: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.database_url:
            from bench.relay import bench_schema

            with bench_schema(args.database_url) as url:
                elapsed, batches = run(url, folder, args.rows, args.batch)
        else:
            url = f"sqlite:///{folder / 'bench.db'}"
            elapsed, batches = run(url, folder, args.rows, args.batch)
    prefix = "siem_pg" if args.database_url else "siem"
    figures = record(
        {
            f"{prefix}_events_per_s": round(args.rows / elapsed),
            f"{prefix}_batch_ms_p50": round(percentile(batches, 0.5), 2),
            f"{prefix}_bench_rows": args.rows,
            f"{prefix}_bench_batch": args.batch,
        },
        machine_key=f"{prefix}_machine",
    )
    print(f"{args.rows} rows in {elapsed:.2f} s: {figures} -> {RESULTS}")


if __name__ == "__main__":
    main()
