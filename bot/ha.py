"""High availability: one active process, the others standby, on one PostgreSQL.

No home-made consensus: the database is the one judge. A node acts only while it holds the
lease (`bot/storage/lease.py`), renewed every `renew`; the epoch it got at takeover is the
fencing token every write of its carries. Two things stop a node that lost the lease, even
one that was paused and does not know it yet:

- the send gate, in front of every homeserver request (`SendGate.check`), is open only until
  `self_fence` after the start of the last renewal that succeeded, on a clock that keeps
  running while the process is stopped (CLOCK_BOOTTIME): a process resumed after a pause
  finds it shut before it can send anything;
- a watchdog *thread* (a coroutine would wait behind a query stuck on a dead socket, which
  never returns) shuts the gate and ends the process with `EXIT_LEASE_LOST` once no renewal
  succeeded for `self_fence`; and the `liaison_fence` trigger refuses its writes once a
  standby raised the epoch.

`self_fence < lease`: a node always stops before the database lets another take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from sqlalchemy.exc import DBAPIError

from bot.config import Config, HaConfig
from bot.storage.lease import LeaseState, LeaseStore, Takeover, work_name

log = logging.getLogger(__name__)

# EX_TEMPFAIL: the lease was lost; a supervisor (systemd Restart=always) starts the process
# again, and it comes back as a standby.
EXIT_LEASE_LOST = 75
WATCH_EVERY_S = 0.05


def boottime() -> float:
    """Seconds on a clock that counts time the process (or the host) was suspended: a
    process stopped for ten seconds must see ten seconds gone when it resumes."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Role(enum.StrEnum):
    STANDBY = "standby"
    ACTIVE = "active"
    FENCED = "fenced"  # lost the lease; exiting


class Fenced(Exception):
    """This process does not hold the lease (any longer): nothing may leave it."""


class SendGate:
    """Open only while this process surely holds the lease. A process that is not part of a
    pair has one that is always open (`SendGate.open_always`)."""

    def __init__(self, self_fence_s: float, clock: Callable[[], float] = boottime) -> None:
        self._fence_s = self_fence_s
        self._clock = clock
        self._until = float("-inf")  # shut until the first renewal
        self._shut = False
        self.refused = 0  # requests refused: a fenced node trying to act
        self.on_refused: Callable[[], None] = lambda: None

    @classmethod
    def open_always(cls) -> SendGate:
        gate = cls(float("inf"))
        gate._until = float("inf")
        return gate

    def renewed(self, started_at: float) -> None:
        """A renewal that started at `started_at` succeeded: the lease runs at least
        `lease` from then on the database's clock, so this node may act until
        `started_at + self_fence`."""
        if not self._shut:
            self._until = max(self._until, started_at + self._fence_s)

    def shut(self) -> None:
        """For good: a node that lost its lease never opens again (it exits)."""
        self._shut = True
        self._until = float("-inf")

    def is_open(self) -> bool:
        return not self._shut and self._clock() < self._until

    def check(self) -> None:
        if not self.is_open():
            self.refused += 1
            self.on_refused()
            raise Fenced("this process does not hold the lease: request refused")


@dataclass
class Status:
    """What /healthz says of this node."""

    role: Role
    node: str | None
    epoch: int
    ready: bool  # standby: the database and the homeserver answered lately


class HaNode:
    """This process's part in the pair: waits as a standby, takes the lease, keeps it."""

    def __init__(
        self,
        config: Config,
        *,
        exit_process: Callable[[int], None] = os._exit,
        clock: Callable[[], float] = boottime,
    ) -> None:
        ha: HaConfig = config.ha
        assert ha.node is not None  # the config refuses [ha] enabled without a node
        self.config = config
        self.node = ha.node
        self.lease = ha.lease
        self.renew_s = ha.renew.total_seconds()
        self.fence_s = ha.self_fence.total_seconds()
        self.leases = LeaseStore(config.database_url(), self.node)
        self.gate = SendGate(self.fence_s, clock)
        self.status = Status(Role.STANDBY, self.node, 0, False)
        self.takeover: Takeover | None = None
        self._clock = clock
        self._exit = exit_process
        self._last_ok = float("-inf")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.on_lost: Callable[[str], None] = lambda why: None

    # ------------------------------------------------------------ connections

    def connect_params(self) -> dict[str, str]:
        """What each new database connection of this process says of itself: its epoch (0
        while a standby: the fence refuses any write) and a name a successor can find."""
        epoch = self.status.epoch
        return {
            "application_name": work_name(self.node, epoch),
            "options": f"-c liaison.epoch={epoch}",
        }

    # ------------------------------------------------------------ standby

    async def wait_for_lease(self, stopping: asyncio.Event) -> Takeover | None:
        """Poll for the lease every `renew` until it is ours (None: asked to stop first).
        Meanwhile the homeserver is asked only `GET /versions`, to know it is reachable."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            last_versions = float("-inf")
            while not stopping.is_set():
                started = self._clock()
                wait = self.renew_s
                try:
                    got = await asyncio.to_thread(self.leases.acquire, self.lease)
                except Exception as exc:  # the database is away: stay a standby, keep asking
                    log.warning("standby %s: lease not readable: %s", self.node, exc)
                    self.status.ready = False
                else:
                    if isinstance(got, Takeover):
                        self._took(got, started)
                        return got
                    self.status.ready = await self._homeserver_ok(http, last_versions)
                    last_versions = self._clock()
                    wait = min(self.renew_s, _until_expiry(got))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), wait)
        return None

    async def _homeserver_ok(self, http: aiohttp.ClientSession, last: float) -> bool:
        if self._clock() - last < 5 and self.status.ready:
            return True  # asked lately
        url = self.config.homeserver.url.rstrip("/") + "/_matrix/client/versions"
        try:
            async with http.get(url) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("standby %s: homeserver not reachable: %s", self.node, exc)
            return False

    def _took(self, takeover: Takeover, started: float) -> None:
        self.takeover = takeover
        self.status = Status(Role.ACTIVE, self.node, takeover.epoch, True)
        self._last_ok = started
        self.gate.renewed(started)
        previous = takeover.previous
        log.warning(
            "node %s took the lease, epoch %d (before: %s)",
            self.node,
            takeover.epoch,
            f"{previous.holder}, epoch {previous.epoch}" if previous else "nobody",
        )

    def end_previous(self) -> int:
        """End the previous holder's database sessions (step two of a takeover)."""
        previous = self.takeover.previous if self.takeover else None
        if previous is None:
            return 0
        try:
            return self.leases.end_sessions(previous)
        except DBAPIError as exc:
            # Most likely a missing grant: the commit-time fence still refuses the old
            # holder's writes, but its open transactions keep their locks until it resumes.
            log.error(
                "could not end node %s's database sessions (grant the bot's role "
                "pg_signal_backend, or run every node as the same role): %s",
                previous.holder,
                exc,
            )
            return 0

    # ------------------------------------------------------------ active

    def keep(self) -> None:
        """Start renewing and watching (threads: they must run when the loop is stuck)."""
        for target, name in ((self._renew_forever, "ha-renew"), (self._watch, "ha-watchdog")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _renew_forever(self) -> None:
        epoch = self.status.epoch
        retried = False
        while not self._stop.wait(0 if retried else self.renew_s):
            started = self._clock()
            try:
                held = self.leases.renew(epoch, self.lease)
            except Exception as exc:  # not renewed this time; the watchdog keeps count
                # Once more at once, on a new connection: the usual cause is a connection
                # a successor ended (this process was frozen), and the retry then learns
                # the lease is gone without waiting out another interval.
                log.warning("lease renewal failed: %s", exc)
                retried = not retried
                continue
            retried = False
            if not held:
                self._lost("the lease was taken over")
                return
            self._last_ok = started
            self.gate.renewed(started)

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_EVERY_S):
            if self._clock() - self._last_ok >= self.fence_s:
                self._lost(f"no lease renewal succeeded for {self.fence_s:g}s")
                return

    def _lost(self, why: str) -> None:
        """Shut the gate, say why, end the process: it must not act on a lease it lost.
        Nothing is cleaned up on the way out: every step of a clean stop would write or
        send, and a standby already acts."""
        if self._stop.is_set():
            return
        self.gate.shut()
        self.status.role = Role.FENCED
        self._stop.set()
        log.critical("node %s, epoch %d, fenced: %s; exiting", self.node, self.status.epoch, why)
        self.on_lost(why)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        logging.shutdown()
        self._exit(EXIT_LEASE_LOST)

    def release(self) -> None:
        """A clean stop: stop renewing, then end the lease now for a standby to take."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.fence_s)
        if self.status.role is Role.ACTIVE:
            self.gate.shut()  # first: once released, a standby may act at once
            try:
                self.leases.release(self.status.epoch)
            except Exception as exc:
                log.warning("lease not released (a standby waits it out): %s", exc)
        self.leases.close()

    def previous_state(self) -> LeaseState | None:
        return self.takeover.previous if self.takeover else None


def _until_expiry(state: LeaseState) -> float:
    """Seconds until the holder's lease ends (on the database's clock), a little after: a
    standby asks again then rather than up to a whole renewal interval later, which is
    where a takeover's time goes."""
    return max(0.01, (state.lease_until - state.now).total_seconds() + 0.01)
