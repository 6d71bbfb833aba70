"""What the SIEM export costs the relay (issue 27): `siem_overhead_ratio`.

The relayed burst of bench/throughput.py (the officer sends N tagged messages into `deu`, the
NATO member counts the bot's N copies decrypted in nato-s; timed from the first send to the
last copy decrypted), run with the bot's `[siem]` section absent (OFF) and present (ON),
in the same run against the same homeserver and the same people: a real rsyslog on loopback
(bot/devtools/rsyslog.py, a certificate from bot/devtools/testca.py) receives the export.

Every burst has a bot of its own: the config is rewritten (`[siem]` appended or not) and the
bot restarted on the same database and crypto store, then warmed up with one relayed
message; an ON bot's exporter has caught up with the audit log (the rows the OFF rounds
wrote) before its burst begins. Rounds alternate the order (OFF ON, ON OFF, …) so that
drift cancels. After each ON burst every audit row it wrote must reach rsyslog, rendered
as the exporter renders it; otherwise, or if a message is lost, the script says what went
wrong and exits non-zero, writing nothing.

`siem_overhead_ratio` = median ON burst time ÷ median OFF burst time (goal ≤ 1.05), with
the two medians, `siem_overhead_ratio_paired` (the median of each round's ON ÷ OFF) and the
machine, into bench/results.json. The clients, the bot and its exporter share one event
loop and the homeserver the machine: on a loaded machine single bursts vary by tens of
per cent, so give it more rounds there.

Run with `python bench/siem_overhead.py [N] [ROUNDS]` (default 50 messages, 3 rounds of
each). Without rsyslogd (and its ossl driver) it says it skips, and writes nothing.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, record
from bench.throughput import BenchFailure, burst, burst_timeout, count_log_lines
from bot.config import SiemConfig
from bot.devtools.rsyslog import Rsyslog, missing
from bot.devtools.scenario import RELEASABLE, RelayScenario, relay_scenario
from bot.devtools.testca import TestCA
from bot.siem.transport import Confirmation, TlsSyslog
from bot.siem.wiring import formatter
from bot.storage import Store

GOAL = 1.05
CATCH_UP_S = 60.0  # an exporter that has not caught up by then is failing


def siem_section(receiver: Rsyslog, ca: Path) -> str:
    """`[siem]` as an operator writes it (the defaults for format, batch, markings)."""
    return (
        "\n[siem]\n"
        f'target = "127.0.0.1:{receiver.port}"\n'
        'server_name = "localhost"\n'
        f'ca_file = "{ca}"\n'
    )


class Deliveries:
    """Counts the exporter's deliveries (one TLS connection, one batch) by wrapping the real
    transport's `deliver`: how the rows of a burst were batched."""

    def __init__(self) -> None:
        self.count = 0
        original = TlsSyslog.deliver

        async def counted(transport: TlsSyslog, payload: bytes) -> Confirmation:
            self.count += 1
            return await original(transport, payload)

        setattr(TlsSyslog, "deliver", counted)  # noqa: B010 (mypy: no assigning to a method)


def _store(sc: RelayScenario) -> Store:
    assert sc.env.store is not None, "the bot is not running"
    return sc.env.store


async def _last_audit_id(store: Store) -> int:
    rows = await asyncio.to_thread(store.recent_audit, 1)
    return rows[0].id if rows else 0


async def caught_up(store: Store) -> int:
    """Wait until the SIEM cursor stands at the last audit row; its id."""
    last = await _last_audit_id(store)
    deadline = time.monotonic() + CATCH_UP_S
    while True:
        cursor = await asyncio.to_thread(store.siem_cursor)
        if cursor and cursor.position and cursor.position.last_id >= last:
            return last
        if time.monotonic() > deadline:
            error = cursor.last_error if cursor else "no cursor"
            raise BenchFailure(
                f"the exporter is not at audit row {last} after {CATCH_UP_S:g} s "
                f"(last error: {error})"
            )
        await asyncio.sleep(0.05)


async def restart(sc: RelayScenario, config: str, label: str) -> None:
    """The bot restarted on `config`, then one relayed message end to end (a new bot may
    share a new room key first: not part of the burst)."""
    await sc.env.stop()
    sc.env.config_path.write_text(config)
    await sc.env.start()
    mark = sc.member.event_count(sc.nato_s)
    await sc.officer.send_text(sc.deu, f"{RELEASABLE} warm-{label}")
    await sc.member.wait_for_text(sc.nato_s, f"warm-{label}", timeout=60, after=mark)


def unexported(
    store: Store, siem: SiemConfig, receiver: Rsyslog, first: int, last: int
) -> tuple[int, list[int]]:
    """The audit rows first < id ≤ last: how many, and the ids of those rsyslog lacks (each
    row rendered as the bot's exporter renders it)."""
    render = formatter(siem.format, siem.markings)
    installation = store.siem_installation()
    rows = store.audit_after(first, 1_000_000, until_id=last)
    received = Counter(receiver.lines())
    return len(rows), [r.entry.id for r in rows if received[render(r.entry, installation).body] < 1]


async def measure(n: int, rounds: int, receiver: Rsyslog, ca: Path) -> dict[str, Any]:
    timeout = burst_timeout(n)
    gaps, _late = count_log_lines()
    times: dict[bool, list[float]] = {False: [], True: []}
    backfills = duplicates = rows_exported = 0
    deliveries = Deliveries()
    batches: list[int] = []
    async with relay_scenario() as sc:
        await sc.warm_up()
        plain = sc.env.config_path.read_text()
        config = sc.env.config
        assert config.siem is None
        for round_no in range(rounds):
            order = (False, True) if round_no % 2 == 0 else (True, False)
            for on in order:
                mode = "ON" if on else "OFF"
                await restart(
                    sc, plain + siem_section(receiver, ca) if on else plain, f"{round_no}-{mode}"
                )
                siem = sc.env.config.siem
                if on:
                    assert siem is not None
                    first = await caught_up(_store(sc))
                    delivered = deliveries.count
                b = await burst(sc, "relay", 2 * round_no + on, n, timeout, gaps)
                times[on].append(b.done_s)
                backfills += b.backfills
                duplicates += b.duplicates
                extra = ""
                if siem is not None:
                    last = await caught_up(_store(sc))
                    count, lacking = await asyncio.to_thread(
                        unexported, _store(sc), siem, receiver, first, last
                    )
                    if lacking:
                        raise BenchFailure(
                            f"ON round {round_no + 1}: rsyslog lacks {len(lacking)} of the "
                            f"{count} audit rows the burst wrote (ids {lacking[:20]})"
                        )
                    rows_exported += count
                    batches.append(deliveries.count - delivered)
                    extra = f"; {count} audit rows in {batches[-1]} batches, all in rsyslog"
                print(
                    f"  round {round_no + 1}/{rounds} SIEM {mode:3}: {n} relayed messages "
                    f"decrypted in {b.done_s:.2f} s (sent in {b.sent_s:.2f} s; bot back-fills "
                    f"{b.backfills}; duplicates {b.duplicates}){extra}",
                    flush=True,
                )
    off, on_ = statistics.median(times[False]), statistics.median(times[True])
    # each round's ON ÷ OFF (the two bursts next to each other in time): drift cancels
    paired = statistics.median(b / a for a, b in zip(times[False], times[True], strict=True))
    return {
        "siem_overhead_ratio": round(on_ / off, 3),
        "siem_overhead_ratio_paired": round(paired, 3),
        "siem_overhead_off_burst_s": round(off, 2),
        "siem_overhead_on_burst_s": round(on_, 2),
        "siem_overhead_off_rounds_s": [round(t, 2) for t in times[False]],
        "siem_overhead_on_rounds_s": [round(t, 2) for t in times[True]],
        "siem_overhead_audit_rows": rows_exported,
        "siem_overhead_batches": sum(batches),  # TLS connections the ON bursts' rows took
        "siem_overhead_backfills": backfills,
        "siem_overhead_duplicates": duplicates,
        "siem_overhead_samples": n,
        "siem_overhead_rounds": rounds,
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    reason = missing()
    if reason is not None:
        print(f"bench/siem_overhead.py: SKIPPED, nothing written: {reason}", flush=True)
        return
    print(f"SIEM overhead: {rounds} round(s) of {n} relayed messages, SIEM export OFF and ON")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ca = TestCA.create(folder / "ca")
        receiver = Rsyslog(folder / "rsyslog", *ca.issue("server", folder / "certs"), ca.ca_path)
        receiver.start()
        try:
            figures = asyncio.run(measure(n, rounds, receiver, ca.ca_path))
        except BenchFailure as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            sys.exit(1)
        finally:
            receiver.stop()
    figures = record(figures, "siem_overhead_machine")
    print(f"machine: {figures['siem_overhead_machine']}")
    print(
        f"burst of {n}, first send to last copy decrypted (medians of {rounds}): SIEM OFF "
        f"{figures['siem_overhead_off_burst_s']} s, ON {figures['siem_overhead_on_burst_s']} s; "
        f"{figures['siem_overhead_audit_rows']} audit rows of the ON bursts all in rsyslog "
        f"({figures['siem_overhead_batches']} batches)"
    )
    ratio = figures["siem_overhead_ratio"]
    verdict = "met" if ratio <= GOAL else "NOT met"
    print(
        f"siem_overhead_ratio = ON ÷ OFF = {ratio} (goal ≤ {GOAL}: {verdict}); median of "
        f"each round's ON ÷ OFF: {figures['siem_overhead_ratio_paired']}"
    )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
