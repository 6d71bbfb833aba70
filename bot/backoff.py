"""Exponential delays with jitter and a cap: one policy for every loop that retries (the
sync loop and the homeserver wait at start-up, the SIEM exporter).

Why jitter: bots restarted together (a homeserver back after an outage) must not retry in
step. Why the capped exponent: 2**1025 does not fit a float, and an outage of hours used to
end the sync loop with an OverflowError.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """The delays between attempts: `first`, doubling up to `cap`, each drawn from 80-100 %
    of its step (by `draw`; the module's `random.uniform` when none is given)."""

    def __init__(
        self,
        first: float = 1.0,
        cap: float = 30.0,
        draw: Callable[[float, float], float] | None = None,
    ) -> None:
        self.first, self.cap, self.failures, self.draw = first, cap, 0, draw

    def next(self) -> float:
        delay = min(self.cap, self.first * 2 ** min(self.failures, 64))
        self.failures += 1
        draw = self.draw or random.uniform
        return float(delay * draw(0.8, 1.0))

    def reset(self) -> None:
        self.failures = 0
