"""Micro-benchmark: drawing one digest picture of 1 000 items over a 12-hour window (the
PNG and its thumbnail, as a digest part posts them), in ms.

Run with `make bench` or `python bench/chart.py [ITEMS]`. Writes `digest_chart_ms` (the
median of RUNS draws after one warm-up, which pays matplotlib's import and font cache) and
`digest_chart_first_ms` (that first draw) into bench/results.json, and names the machine.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, record
from bot.services.digest_chart import ChartData, render_chart
from policy import Precedence

RUNS = 9
T0 = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
WINDOW = timedelta(hours=12)


def items(count: int) -> list[SimpleNamespace]:
    """Items spread over the window, every precedence, one in five exercise traffic."""
    rng = random.Random(4774)
    return [
        SimpleNamespace(
            created_at=T0 + timedelta(seconds=rng.randrange(int(WINDOW.total_seconds()))),
            precedence=Precedence(rng.randrange(len(Precedence))),
            exercise=rng.random() < 0.2,
        )
        for _ in range(count)
    ]


def draw_ms(count: int) -> float:
    """One picture from the items (counting and drawing), in ms."""
    chosen = items(count)
    began = time.perf_counter()
    render_chart(ChartData.of(chosen, T0, T0 + WINDOW, "NATO SECRET", 3))
    return (time.perf_counter() - began) * 1000


def main(count: int) -> None:
    first = draw_ms(count)
    runs = [draw_ms(count) for _ in range(RUNS)]
    figures = record(
        {
            "digest_chart_ms": round(statistics.median(runs), 1),
            "digest_chart_first_ms": round(first, 1),
            "digest_chart_items": count,
        },
        "digest_chart_machine",
    )
    print(f"machine: {figures['digest_chart_machine']}")
    print(
        f"digest chart of {count} items: {statistics.median(runs):.1f} ms median of {RUNS} "
        f"(first, with matplotlib's import: {first:.1f} ms)"
    )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
