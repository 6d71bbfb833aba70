"""Relay throughput against direct sends to the same homeserver, same run.

An officer's E2EE client sends a burst of N messages (one after the other, as fast as it
can) and the NATO member's client counts them decrypted. Three kinds of burst, alternated
in every round:

* single: the officer sends N messages straight into nato-s;
* double: the officer sends every one of the N messages twice into nato-s (2N events). A
  relay cannot cost the homeserver less than that: the source message and its copy, so
  this is the fair baseline for what the bot itself adds;
* relay: the officer sends N tagged messages `[GEHEIM // REL TO NATO] …` into the national
  room `deu`, and the member counts the bot's N copies decrypted in nato-s.

A burst's time runs from the first send to the last message decrypted. Figures are medians
over ROUNDS rounds: `relay_throughput_ratio` = double burst time ÷ relayed burst time (goal
≥ 0.9), `relay_throughput_ratio_single` = single burst time ÷ relayed burst time. Every
relayed message must arrive exactly once and every receipt say "Relayed to"; otherwise the
script says what went wrong and exits non-zero, writing nothing.

Run with `make bench` or `python bench/throughput.py [N] [ROUNDS]` (default 50 messages, 5
rounds). The set-up (homeserver, in-process bot, people, rooms) is
bot/devtools/scenario.py's.
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

GOAL = 0.9
KINDS = ("single", "double", "relay")


class BenchFailure(Exception):
    """Some messages never arrived: the benchmark measured nothing worth recording."""


@dataclass(frozen=True)
class Burst:
    kind: str  # one of KINDS
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
    copies_of_each = ("a", "b") if kind == "double" else ("a",)
    tag = f"{kind}-{round_no}-t"
    pattern = re.compile(rf"\b{tag}-(\d+)-([ab])-")
    seen: set[tuple[int, str]] = set()
    wanted = n * len(copies_of_each)

    def arrived(event: Event) -> bool:
        if isinstance(event, RoomMessageText):
            found = pattern.search(event.body)
            if found:
                seen.add((int(found[1]), found[2]))
        return len(seen) >= wanted

    member_mark = sc.member.event_count(sc.nato_s)
    officer_mark = sc.officer.event_count(sc.deu)
    gaps_before = gaps.count
    began = time.perf_counter()

    async def send_all() -> float:
        for i in range(n):
            for copy in copies_of_each:
                await sc.officer.send_text(room, f"{prefix}{tag}-{i}-{copy}-")
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
        missing = sorted({i for i in range(n) for c in copies_of_each} - {i for i, _ in seen})
        undecryptable = sum(
            isinstance(e, MegolmEvent) for e in sc.member.events[sc.nato_s][member_mark:]
        )
        raise BenchFailure(
            f"{kind} round {round_no}: only {len(seen)} of {wanted} messages reached the member "
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
    duplicates = len({e.event_id for e in copies}) - wanted
    return Burst(kind, n, last_sent - began, done - began, gaps.count - gaps_before, duplicates)


async def _receipts(sc: RelayScenario, mark: int, n: int, timeout: float) -> list[str]:
    """Wait until the bot's receipts in deu cover all n messages (a receipt covers one, or
    the several a sync batch brought: "Receipt for your K tagged messages"); the lines that
    are not 'Relayed to …'."""
    notices: dict[str, RoomMessageNotice] = {}
    batched = re.compile(r"Receipt for your (\d+) tagged messages")

    def covered() -> int:
        total = 0
        for event in notices.values():
            found = batched.search(event.body)
            total += int(found[1]) if found else 1
        return total

    def counted(event: Event) -> bool:
        if isinstance(event, RoomMessageNotice) and event.sender == sc.env.bot_user.user_id:
            notices[event.event_id] = event
        return covered() >= n

    try:
        await sc.officer.wait_for(sc.deu, counted, timeout, after=mark)
    except AssertionError:
        raise BenchFailure(f"receipts cover only {covered()} of {n} messages") from None
    refused = []
    for event in notices.values():
        lines = [line for line in event.body.splitlines() if line.strip().startswith(("-", "•"))]
        refused += [line for line in lines if "Relayed to" not in line]
        if not lines and "Relayed to" not in event.body:
            refused.append(event.body)
    return refused


def _listed(numbers: list[int]) -> str:
    if len(numbers) > 20:
        return ", ".join(map(str, numbers[:20])) + ", …"
    return ", ".join(map(str, numbers))


def burst_timeout(n: int) -> float:
    return 120 + 1.0 * n  # generous: far beyond the few seconds a burst takes


def count_log_lines() -> tuple[BackfillCounter, LateKeys]:
    """Install the counters of the bot's back-fills and of nio's late room keys."""
    gaps = BackfillCounter()
    logging.getLogger("bot.matrix.events").addHandler(gaps)
    logging.getLogger("bot.matrix.events").setLevel(logging.INFO)
    late = LateKeys()
    nio_crypto = logging.getLogger("nio.crypto")
    nio_crypto.addHandler(late)
    nio_crypto.propagate = False
    return gaps, late


async def measure(n: int, rounds: int) -> dict[str, Any]:
    timeout = burst_timeout(n)
    gaps, late = count_log_lines()
    bursts: list[Burst] = []
    async with relay_scenario() as sc:
        await sc.warm_up()
        late.by_room.clear()
        for round_no in range(rounds):
            for kind in KINDS:
                b = await burst(sc, kind, round_no, n, timeout, gaps)
                bursts.append(b)
                print(
                    f"  round {round_no + 1}/{rounds} {kind:6}: {n} messages"
                    f"{' (each twice)' if kind == 'double' else ''} decrypted in "
                    f"{b.done_s:.2f} s (sent in {b.sent_s:.2f} s; bot back-fills "
                    f"{b.backfills}; duplicates {b.duplicates})",
                    flush=True,
                )
        names = {sc.deu: "deu", sc.nato_s: "nato-s"}
        late_keys = {names.get(room, room): count for room, count in late.by_room.items()}
    median = {kind: statistics.median(b.done_s for b in bursts if b.kind == kind) for kind in KINDS}
    relay = [b for b in bursts if b.kind == "relay"]
    return {
        "relay_throughput_ratio": round(median["double"] / median["relay"], 3),
        "relay_throughput_ratio_single": round(median["single"] / median["relay"], 3),
        "relay_burst_s": round(median["relay"], 2),
        "direct_burst_s": round(median["single"], 2),
        "direct_double_burst_s": round(median["double"], 2),
        "relay_burst_rounds_s": [round(b.done_s, 2) for b in relay],
        "direct_double_burst_rounds_s": [round(b.done_s, 2) for b in bursts if b.kind == "double"],
        "direct_burst_rounds_s": [round(b.done_s, 2) for b in bursts if b.kind == "single"],
        "relay_throughput_msgs_s": round(len(relay) and relay[0].n / median["relay"], 2),
        "relay_throughput_backfills": sum(b.backfills for b in relay),
        "relay_throughput_duplicates": sum(b.duplicates for b in bursts),
        # decryptions that waited for a late room key, all bursts, any client or the bot
        "relay_throughput_late_key_events": late_keys,
        "relay_throughput_samples": n,
        "relay_throughput_rounds": rounds,
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    print(
        f"relay throughput: {rounds} round(s) of {n} direct, {n} doubled and {n} relayed messages",
        flush=True,
    )
    try:
        figures = asyncio.run(measure(n, rounds))
    except BenchFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
    figures = record(figures, "relay_throughput_machine")
    print(f"machine: {figures['relay_throughput_machine']}")
    print(
        f"burst of {n}, first send to last decrypted (medians of {rounds}): direct "
        f"{figures['direct_burst_s']} s, each sent twice {figures['direct_double_burst_s']} s, "
        f"relayed {figures['relay_burst_s']} s"
    )
    print(
        f"bot back-fills of limited syncs: {figures['relay_throughput_backfills']}; duplicate "
        f"copies seen: {figures['relay_throughput_duplicates']}; events whose "
        f"room key came late (decrypted on retry): {figures['relay_throughput_late_key_events']}"
    )
    ratio = figures["relay_throughput_ratio"]
    verdict = "met" if ratio >= GOAL else "NOT met"
    print(
        f"relay_throughput_ratio = doubled direct ÷ relayed = {ratio} (goal ≥ {GOAL}: "
        f"{verdict}); relay_throughput_ratio_single = direct ÷ relayed = "
        f"{figures['relay_throughput_ratio_single']}"
    )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
