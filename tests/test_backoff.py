"""`bot.backoff.Backoff` (the sync loop's, start-up's and the SIEM exporter's): exponential (each delay twice the last), jittered (each one
drawn from 80-100 % of its step), capped at 30 s, and back to the first step after a reset.

Deterministic: the module's `random` is replaced by a seeded generator, or by one that
always answers the top or the bottom of the range it is asked for.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest

from bot import backoff as sync  # the module whose `random` draws the jitter
from bot.backoff import Backoff

CAP = 30.0
# The steps before jitter: 1, 2, 4, 8, 16, then the cap for ever.
STEPS = [1.0, 2.0, 4.0, 8.0, 16.0, CAP, CAP, CAP]


class _Edge:
    """A stand-in for the `random` module whose `uniform` always answers one end of the
    range it is asked for, and notes every range asked."""

    def __init__(self, pick: Callable[[float, float], float]) -> None:
        self.pick = pick
        self.asked: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.asked.append((a, b))
        return self.pick(a, b)


def _delays(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next() for _ in range(n)]


def test_without_jitter_the_delay_doubles_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    top = _Edge(lambda _a, b: b)
    monkeypatch.setattr(sync, "random", top)
    assert _delays(Backoff(), len(STEPS)) == STEPS
    # the jitter factor is drawn from [0.8, 1.0] for every delay, never anything wider
    assert top.asked == [(0.8, 1.0)] * len(STEPS)


def test_the_shortest_delays_are_four_fifths_of_each_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync, "random", _Edge(lambda a, _b: a))
    assert _delays(Backoff(), len(STEPS)) == pytest.approx([0.8 * s for s in STEPS])


def test_jittered_delays_stay_within_bounds_and_do_vary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync, "random", random.Random(31))
    runs = [_delays(Backoff(), len(STEPS)) for _ in range(200)]
    for run in runs:
        for step, delay in zip(STEPS, run, strict=True):
            assert 0.8 * step <= delay <= step, (step, delay)
        # each delay longer than the one before up to the cap (0.8 x 2 > 1), whatever the
        # jitter; at the cap jitter alone orders them
        assert all(b > a for a, b in itertools.pairwise(run[:6])), run
    # jitter: the same step is not the same delay in every run (no thundering herd)
    for k in range(len(STEPS)):
        assert len({run[k] for run in runs}) > 150, k


def test_the_cap_holds_however_many_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync, "random", _Edge(lambda _a, b: b))
    backoff = Backoff()
    delays = _delays(backoff, 1000)
    assert max(delays) == CAP
    assert delays[5:] == [CAP] * 995


def test_the_cap_holds_through_an_outage_of_a_day(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by this test: the 1025th failure in a row (about 7.5 h of outage at 30 s)
    overflowed a float and ended the sync loop."""
    monkeypatch.setattr(sync, "random", _Edge(lambda _a, b: b))
    backoff = Backoff()
    # a day of failures at the cap: 24 h / 30 s
    assert set(_delays(backoff, 2880)[5:]) == {CAP}


def test_reset_starts_again_from_the_first_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync, "random", _Edge(lambda _a, b: b))
    backoff = Backoff()
    assert _delays(backoff, 7) == STEPS[:7]
    backoff.reset()
    assert _delays(backoff, 3) == [1.0, 2.0, 4.0]
    backoff.reset()
    backoff.reset()  # a reset of a reset backoff changes nothing
    assert _delays(backoff, 1) == [1.0]


def test_first_and_cap_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync, "random", _Edge(lambda _a, b: b))
    assert _delays(Backoff(first=0.5, cap=3.0), 5) == [0.5, 1.0, 2.0, 3.0, 3.0]
