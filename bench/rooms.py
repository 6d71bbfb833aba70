"""The bot as an operator runs it (`liaison-bot run`, its own process) with many rooms.

One bot with 1 000 managed rooms (BIG) is started (the rooms are created: a few minutes),
stopped with SIGTERM and started again three times; SMALL (100 rooms) once the same way:

* `restart_1000_rooms_s`: from starting the process again to the bot's answer to the first
  new event, decrypted: an admin's E2EE client sends `!rooms` in its DM with the bot right
  after the process starts, and the clock stops when the answer (its first part: a thousand
  rooms do not fit one event) is decrypted. The median of three restarts. This includes the
  interpreter's start and imports (about 1.2 s here), which no change to the bot's start-up
  removes; `first_sync_1000_rooms_s` is the bot's own "first sync after X s" log line of the
  same restarts, measured inside the process after the imports (the `!rooms` is handled in
  that first sync, so it is the time to the first processed event without the interpreter).
* `first_start_1000_rooms_first_sync_s`: the first start, rooms created.
* `rss_1000_rooms_mb`: the bot's resident memory (VmRSS, /proc/PID/status) after the first
  start's first sync; its peak (VmHWM); and after a restart (rooms restored).
* `restart_100_rooms_s`, `first_sync_100_rooms_s`: the same restart with 100 rooms.

Run with `make bench` or `python bench/rooms.py [BIG] [SMALL]` (default 1000 and 100 rooms).
Writes the figures into bench/results.json.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nio import RoomMessageNotice

from bench.common import RESULTS, record, rooms_config
from bot.config import load_config
from bot.devtools.devserver import DevServer, RegisteredUser
from bot.devtools.e2ee_client import E2EEClient, cross_sign, open_dm, talk
from bot.gate.config import register_entry

SCRIPT = str(Path(sys.executable).parent / "liaison-bot")
RSS_GOAL_MB = 200
RESTART_GOAL_S = 2.0
FIRST_SYNC = re.compile(r"first sync after ([\d.]+) s")
PROVISIONED = re.compile(r"rooms provisioned: (\d+)/(\d+)")


class BenchFailure(Exception):
    """The bot did not start, answer or stop as it should."""


class BotProcess:
    """`liaison-bot run --config …` in its own process, its output in a log file."""

    def __init__(self, workdir: Path, bot_user: RegisteredUser) -> None:
        self.workdir = workdir
        self.user_id = bot_user.user_id
        self.config = workdir / "config.toml"
        self.log = workdir / "bot.log"
        self.env = {
            **os.environ,
            "LIAISON_BENCH_PASSWORD": bot_user.password,
            "LIAISON_BENCH_PICKLE_KEY": "bench-pickle-key-0123456789abcdef",
            "LIAISON_BENCH_DATA_KEY": "bench-data-key-0123456789abcdef01",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0  # where this run's lines start in the log

    def start(self) -> None:
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [SCRIPT, "run", "--config", str(self.config)],
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        with self.log.open("rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")

    async def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first match of pattern in this run's log; prints provisioning progress."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        began, shown = time.monotonic(), 0
        while True:
            text = self.output()
            found = pattern.search(text)
            if found:
                return found
            done = [int(m[1]) for m in PROVISIONED.finditer(text)]
            if done and done[-1] >= shown + 100:
                shown = done[-1]
                total = PROVISIONED.findall(text)[-1][1]
                print(
                    f"    rooms provisioned: {shown}/{total} ({time.monotonic() - began:.0f} s)",
                    flush=True,
                )
            if self.proc.poll() is not None:
                raise BenchFailure(
                    f"the bot exited with {self.proc.returncode} before logging "
                    f"{pattern.pattern!r}:\n{text[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise BenchFailure(
                    f"{pattern.pattern!r} not logged within {timeout:g} s:\n{text[-3000:]}"
                )
            await asyncio.sleep(0.1)

    def memory_mb(self) -> dict[str, float]:
        """VmRSS and VmHWM of the bot process, in MB (MiB)."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        out = {}
        for line in status.splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) / 1024  # kB → MiB
        return out

    async def stop(self) -> None:
        """SIGTERM, and wait for a clean exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise BenchFailure("the bot did not stop within 60 s of SIGTERM") from None
        if code != 0:
            raise BenchFailure(f"the bot exited with {code} on SIGTERM:\n{self.output()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def make_bot(
    server: DevServer, workdir: Path, name: str, rooms: int, admin: RegisteredUser
) -> BotProcess:
    workdir.mkdir(parents=True)
    bot_user = server.register(name, f"pw-{name}")
    bot = BotProcess(workdir, bot_user)
    bot.config.write_text(
        rooms_config(server.base_url, bot_user.user_id, rooms, admins=(admin.user_id,))
    )
    server.add_register(
        register_entry(load_config(bot.config)), data_key=bot.env["LIAISON_BENCH_DATA_KEY"]
    )
    return bot


async def restart_case(
    server: DevServer, admin: RegisteredUser, workdir: Path, rooms: int, restarts: int
) -> dict[str, Any]:
    print(f"{rooms} rooms: first start (rooms created)", flush=True)
    bot = make_bot(server, workdir, f"liaison-restart-{rooms}", rooms, admin)
    client: E2EEClient | None = None
    walls: list[float] = []
    syncs: list[float] = []
    try:
        began = time.perf_counter()
        bot.start()
        first_start_sync = float((await bot.wait_for(FIRST_SYNC, 1800))[1])
        first_start_wall = time.perf_counter() - began
        samples = await settled_memory(bot)
        client = await E2EEClient.create(server, admin, workdir / "admin-store")
        await cross_sign(server, client, {})
        await client.start()
        dm = await open_dm(client, bot.user_id)
        await talk(client, dm, "!rooms", "Managed rooms", timeout=120)  # the path works
        for n in range(restarts):
            await bot.stop()
            print(f"{rooms} rooms: restart {n + 1}, then `!rooms` from the admin at once")
            mark = client.event_count(dm)
            began = time.perf_counter()
            bot.start()
            await client.send_text(dm, "!rooms")
            try:
                reply = await client.wait_for(
                    dm,
                    lambda e: isinstance(e, RoomMessageNotice) and "Managed rooms" in e.body,
                    120,
                    after=mark,
                )
            except AssertionError as exc:
                raise BenchFailure(
                    f"no answer to `!rooms` after the restart: {exc}\n--- bot log (this run):\n"
                    f"{bot.output()[-5000:]}"
                ) from None
            walls.append(time.perf_counter() - began)
            assert isinstance(reply, RoomMessageNotice)
            syncs.append(float((await bot.wait_for(FIRST_SYNC, 120))[1]))
            await client.wait_for(  # every part of the listing came, the last room included
                dm,
                lambda e: isinstance(e, RoomMessageNotice) and f"room-{rooms - 1} " in e.body,
                60,
                after=mark,
            )
        restart_samples = await settled_memory(bot)
        await bot.stop()
    finally:
        bot.kill()
        if client is not None:
            await client.stop()
    return {
        f"restart_{rooms}_rooms_s": round(statistics.median(walls), 3),
        f"restart_{rooms}_rooms_runs_s": [round(w, 3) for w in walls],
        f"first_sync_{rooms}_rooms_s": round(statistics.median(syncs), 3),
        f"first_start_{rooms}_rooms_first_sync_s": round(first_start_sync, 2),
        f"first_start_{rooms}_rooms_wall_s": round(first_start_wall, 2),
        f"rss_{rooms}_rooms_mb": round(samples[-1]["VmRSS"], 1),
        f"rss_{rooms}_rooms_peak_mb": round(max(s["VmHWM"] for s in samples), 1),
        f"rss_{rooms}_rooms_restart_mb": round(restart_samples[-1]["VmRSS"], 1),
    }


async def settled_memory(bot: BotProcess, seconds: int = 5) -> list[dict[str, float]]:
    """One sample a second after the first sync: the sweep and the digest scheduler start
    right after it, so let them run."""
    samples = []
    for _ in range(seconds):
        await asyncio.sleep(1)
        samples.append(bot.memory_mb())
    return samples


async def measure(big: int, small: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, DevServer(Path(tmp) / "synapse") as server:
        admin = server.register("admin", "pw-admin")
        figures = await restart_case(server, admin, Path(tmp) / f"bot-{small}", small, 1)
        figures.update(await restart_case(server, admin, Path(tmp) / f"bot-{big}", big, 3))
    return figures


def main() -> None:
    big = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    small = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    began = time.perf_counter()
    try:
        figures = asyncio.run(measure(big, small))
    except BenchFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
    figures = record(figures, "rooms_machine")
    print(f"machine: {figures['rooms_machine']}")
    rss, peak = figures[f"rss_{big}_rooms_mb"], figures[f"rss_{big}_rooms_peak_mb"]
    verdict = "met" if rss <= RSS_GOAL_MB else "NOT met"
    print(
        f"rss_{big}_rooms_mb = {rss} MB resident after provisioning and the first sync "
        f"(peak {peak} MB; goal ≤ {RSS_GOAL_MB} MB: {verdict}); "
        f"{small} rooms: {figures[f'rss_{small}_rooms_mb']} MB"
    )
    print(
        f"{big} rooms: first start (rooms created): first sync after "
        f"{figures[f'first_start_{big}_rooms_first_sync_s']} s, "
        f"{figures[f'first_start_{big}_rooms_wall_s']} s from process start; restart: first "
        f"sync after {figures[f'first_sync_{big}_rooms_s']} s, "
        f"{figures[f'rss_{big}_rooms_restart_mb']} MB resident"
    )
    for rooms in (big, small):
        wall = figures[f"restart_{rooms}_rooms_s"]
        goal = f" (goal ≤ {RESTART_GOAL_S} s: {'met' if wall <= RESTART_GOAL_S else 'NOT met'})"
        print(
            f"restart_{rooms}_rooms_s = {wall} s from process start to the answer to `!rooms` "
            f"decrypted{goal if rooms == big else ''}; inside the process (after the imports) "
            f"the first sync, which handles it, after {figures[f'first_sync_{rooms}_rooms_s']} s"
        )
    print(f"took {time.perf_counter() - began:.0f} s; written to {RESULTS}")


if __name__ == "__main__":
    main()
