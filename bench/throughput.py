"""Relay throughput against the raw send throughput of the same homeserver, same run.

Raw: the officer's E2EE client sends N messages into nato-s as fast as it can (one after the
other) and the NATO member's client counts them decrypted. Relay: the officer sends N tagged
messages `[GEHEIM // REL TO NATO] …` into the national room `deu`, and the member counts the
bot's relayed copies decrypted in nato-s. Throughput = N ÷ (first send → last one decrypted).
Bursts alternate raw, relay, raw, relay … (ROUNDS each); the figures are medians.

Run with `make bench` or `python bench/throughput.py [N] [ROUNDS]` (default 200 messages,
3 rounds). Writes `relay_throughput_ratio` = median relay ÷ median raw throughput, and the
figures behind it, into bench/results.json. Messages that never arrive (within a generous
timeout) are a failure: the script says which and exits non-zero, writing nothing.
The set-up (homeserver, in-process bot, people, rooms) is bot/devtools/scenario.py's.
"""

from __future__ import annotations

import asyncio
import logging
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nio import Event, MegolmEvent, RoomMessageNotice, RoomMessageText

from bench.common import RESULTS, record
from bot.devtools.scenario import RELEASABLE, RelayScenario, relay_scenario

GOAL = 0.8


class BenchFailure(Exception):
    """Some messages never arrived: the benchmark measured nothing worth recording."""


@dataclass(frozen=True)
class Burst:
    kind: str  # "raw" or "relay"
    n: int
    sent_s: float  # first send → last send returned
    done_s: float  # first send → the member has all n decrypted
    backfills: int  # gaps the bot back-filled during the burst (limited syncs)
    duplicates: int  # events the member saw beyond one per message (double relays)

    @property
    def throughput(self) -> float:
        return self.n / self.done_s

    @property
    def send_rate(self) -> float:
        return self.n / self.sent_s


class BackfillCounter(logging.Handler):
    """Counts the bot's "back-filled N event(s) of a gap" lines (a `limited` sync)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("back-filled"):
            self.count += 1


class LateKeys(logging.Handler):
    """Counts nio's "no session found" decryption failures by room (a room key that arrived
    after its message: the event is decrypted again later) instead of printing each one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.by_room: Counter[str] = Counter()
        self._out = logging.StreamHandler()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        found = re.search(r"no session found .* for room (\S+)", message)
        if found:
            self.by_room[found[1]] += 1
        elif not message.startswith("Missing session for device"):
            self._out.emit(record)


async def burst(
    sc: RelayScenario, kind: str, round_no: int, n: int, timeout: float, gaps: BackfillCounter
) -> Burst:
    relay = kind == "relay"
    room = sc.deu if relay else sc.nato_s
    prefix = f"{RELEASABLE} " if relay else ""
    tag = f"{kind}-{round_no}-t"
    pattern = re.compile(rf"\b{tag}-(\d+)-")
    seen: set[int] = set()

    def arrived(event: Event) -> bool:
        if isinstance(event, RoomMessageText):
            found = pattern.search(event.body)
            if found:
                seen.add(int(found[1]))
        return len(seen) >= n

    member_mark = sc.member.event_count(sc.nato_s)
    officer_mark = sc.officer.event_count(sc.deu)
    gaps_before = gaps.count
    began = time.perf_counter()

    async def send_all() -> float:
        for i in range(n):
            await sc.officer.send_text(room, f"{prefix}{tag}-{i}-")
        return time.perf_counter()

    async def all_decrypted() -> float:
        await sc.member.wait_for(sc.nato_s, arrived, timeout, after=member_mark)
        return time.perf_counter()

    sender = asyncio.create_task(send_all())
    waiter = asyncio.create_task(all_decrypted())
    await asyncio.wait({sender, waiter}, return_when=asyncio.FIRST_EXCEPTION)
    if sender.done() and sender.exception() is not None:
        waiter.cancel()
        raise BenchFailure(f"{kind} round {round_no}: sending failed: {sender.exception()}")
    last_sent = await sender
    try:
        done = await waiter
    except AssertionError:
        missing = sorted(set(range(n)) - seen)
        undecryptable = sum(
            isinstance(e, MegolmEvent) for e in sc.member.events[sc.nato_s][member_mark:]
        )
        raise BenchFailure(
            f"{kind} round {round_no}: only {len(seen)} of {n} messages reached the member "
            f"decrypted within {timeout:g} s; missing {len(missing)}: {_listed(missing)}; "
            f"undecryptable events in nato-s: {undecryptable}; bot back-fills: "
            f"{gaps.count - gaps_before}\n{sc.member.summary(sc.nato_s, last=10)}"
        ) from None
    if relay:  # the bot's receipts to the officer: the bot is idle again before the next burst
        receipts = await _receipts(sc, officer_mark, n, timeout)
        if receipts:
            raise BenchFailure(f"relay round {round_no}: receipts not all 'Relayed to': {receipts}")
    copies = [
        e
        for e in sc.member.events[sc.nato_s][member_mark:]
        if isinstance(e, RoomMessageText) and pattern.search(e.body)
    ]
    duplicates = len({e.event_id for e in copies}) - n
    return Burst(kind, n, last_sent - began, done - began, gaps.count - gaps_before, duplicates)


async def _receipts(sc: RelayScenario, mark: int, n: int, timeout: float) -> list[str]:
    """Wait for the bot's n receipts in deu; the ones that are not 'Relayed to …'."""
    notices: dict[str, RoomMessageNotice] = {}

    def counted(event: Event) -> bool:
        if isinstance(event, RoomMessageNotice) and event.sender == sc.env.bot_user.user_id:
            notices[event.event_id] = event
        return len(notices) >= n

    try:
        await sc.officer.wait_for(sc.deu, counted, timeout, after=mark)
    except AssertionError:
        raise BenchFailure(f"only {len(notices)} of {n} relay receipts arrived") from None
    return [e.body for e in notices.values() if "Relayed to" not in e.body]


def _listed(numbers: list[int]) -> str:
    if len(numbers) > 20:
        return ", ".join(map(str, numbers[:20])) + ", …"
    return ", ".join(map(str, numbers))


async def measure(n: int, rounds: int) -> dict[str, Any]:
    timeout = 120 + 1.0 * n  # generous: far beyond the few seconds a burst takes
    gaps = BackfillCounter()
    logging.getLogger("bot.matrix.events").addHandler(gaps)
    logging.getLogger("bot.matrix.events").setLevel(logging.INFO)
    late = LateKeys()
    nio_crypto = logging.getLogger("nio.crypto")
    nio_crypto.addHandler(late)
    nio_crypto.propagate = False
    bursts: list[Burst] = []
    async with relay_scenario() as sc:
        await sc.warm_up()
        late.by_room.clear()
        for round_no in range(rounds):
            for kind in ("raw", "relay"):
                b = await burst(sc, kind, round_no, n, timeout, gaps)
                bursts.append(b)
                print(
                    f"  round {round_no + 1}/{rounds} {kind:5}: {b.throughput:6.1f} msg/s "
                    f"({n} in {b.done_s:.2f} s; sent in {b.sent_s:.2f} s = "
                    f"{b.send_rate:.1f} msg/s; bot back-fills {b.backfills}; "
                    f"duplicates {b.duplicates})",
                    flush=True,
                )
        names = {sc.deu: "deu", sc.nato_s: "nato-s"}
        late_keys = {names.get(room, room): count for room, count in late.by_room.items()}
    raw = [b for b in bursts if b.kind == "raw"]
    relay = [b for b in bursts if b.kind == "relay"]
    raw_tp = statistics.median(b.throughput for b in raw)
    relay_tp = statistics.median(b.throughput for b in relay)
    return {
        "relay_throughput_ratio": round(relay_tp / raw_tp, 3),
        "relay_throughput_msgs_s": round(relay_tp, 2),
        "raw_send_throughput_msgs_s": round(raw_tp, 2),
        "relay_throughput_rounds_msgs_s": [round(b.throughput, 2) for b in relay],
        "raw_send_throughput_rounds_msgs_s": [round(b.throughput, 2) for b in raw],
        "relay_throughput_officer_send_msgs_s": round(
            statistics.median(b.send_rate for b in relay), 2
        ),
        "relay_throughput_backfills": sum(b.backfills for b in relay),
        "relay_throughput_duplicates": sum(b.duplicates for b in bursts),
        # decryptions that waited for a late room key, all bursts, any client or the bot
        "relay_throughput_late_key_events": late_keys,
        "relay_throughput_samples": n,
        "relay_throughput_rounds": rounds,
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    print(f"relay throughput: {rounds} round(s) of {n} raw and {n} relayed messages", flush=True)
    try:
        figures = asyncio.run(measure(n, rounds))
    except BenchFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
    figures = record(figures, "relay_throughput_machine")
    print(f"machine: {figures['relay_throughput_machine']}")
    print(
        f"raw send (officer → member, decrypted): {figures['raw_send_throughput_msgs_s']} msg/s; "
        f"relay (officer → bot → member, decrypted): {figures['relay_throughput_msgs_s']} msg/s "
        f"(medians of {rounds} bursts of {n})"
    )
    print(
        f"bot back-fills of limited syncs: {figures['relay_throughput_backfills']}; duplicate "
        f"copies seen: {figures['relay_throughput_duplicates']}; events whose "
        f"room key came late (decrypted on retry): {figures['relay_throughput_late_key_events']}"
    )
    ratio = figures["relay_throughput_ratio"]
    verdict = "met" if ratio >= GOAL else "NOT met"
    print(f"relay_throughput_ratio = relay / raw = {ratio} (goal ≥ {GOAL}: {verdict})")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
