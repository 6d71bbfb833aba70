"""Two (or more) `liaison-bot run` processes in a high-availability pair, on a throwaway
Synapse and a PostgreSQL database, for the tests (tests/test_ha_failover.py) and the failover
benchmark (bench/failover.py).

Each node reaches the homeserver through a proxy of its own that records every request, so a
test can tell which node sent what and when: both nodes are the same Matrix device, the
homeserver cannot tell them apart. An admin (with a direct room), a German liaison officer in
`deu` and a Norwegian NATO member in `nato-s` take part, each on a cross-signed E2EE client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from bot.devtools.botenv import ROOMS, write_config
from bot.devtools.devserver import DevServer, RegisteredUser
from bot.devtools.e2ee_client import E2EEClient, open_dm, talk
from bot.devtools.proxy import RecordingProxy
from bot.storage import HaLeaderRow, Store, audit_key_from
from bot.storage.migrate import upgrade

SCRIPT = str(Path(sys.executable).parent / "liaison-bot")
DATA_KEY = "ha-data-key-0123456789abcdef-0123456789"
PICKLE_KEY = "ha-pickle-key-0123456789abcdef-012345678"
HA = """
[ha]
enabled = true
node = "{node}"
"""

MakeUser = Callable[[str], RegisteredUser]
MakeClient = Callable[[RegisteredUser], Awaitable[E2EEClient]]


def start_bot(config_path: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`liaison-bot run` as a process of its own, its output appended to `log`."""
    return subprocess.Popen(
        [SCRIPT, "run", "--config", str(config_path)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


@dataclass
class Node:
    name: str
    config_path: Path
    log: Path
    env: dict[str, str]
    proxy: RecordingProxy
    proc: subprocess.Popen[bytes] | None = None

    def start(self, **extra_env: str) -> subprocess.Popen[bytes]:
        self.proc = start_bot(self.config_path, {**self.env, **extra_env}, self.log)
        return self.proc

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_for_log(self, text: str, timeout: float = 90, since: int = 0) -> None:
        """`text` logged (after character `since` of the log); fails at once if the process
        ended first."""
        deadline = time.monotonic() + timeout
        while text not in self.text()[since:]:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"node {self.name} exited {self.proc.returncode}:\n{self.text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged by {self.name}:\n{self.text()[-4000:]}")
            await asyncio.sleep(0.05)

    async def exit_code(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a test may have left it paused
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)


@dataclass
class HaPair:
    nodes: dict[str, Node]
    store: Store  # as the CLI opens it: no epoch, not fenced
    bot_user: RegisteredUser
    admin: E2EEClient = field(init=False, repr=False)
    dm: str = field(init=False, repr=False)
    officer: E2EEClient = field(init=False, repr=False)
    member: E2EEClient = field(init=False, repr=False)
    deu: str = field(init=False, repr=False)
    nato_s: str = field(init=False, repr=False)

    def leader(self) -> tuple[int, str]:
        """(epoch, holder) of the lease, as the database has it now."""
        with self.store.session() as session:
            row = session.execute(select(HaLeaderRow.epoch, HaLeaderRow.holder)).one()
        return int(row[0]), str(row[1])

    def active(self) -> Node:
        return self.nodes[self.leader()[1]]

    async def wait_active(self, node: Node, since: int = 0, timeout: float = 60) -> None:
        await node.wait_for_log(f"node {node.name} active", timeout, since)


def _room_id(store: Store, key: str) -> str:
    room = store.room(key)
    assert room is not None and room.room_id is not None, f"the bot has not made {key}"
    return room.room_id


async def _first_active(nodes: list[Node], timeout: float = 120) -> Node:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            if f"node {node.name} active" in node.text():
                return node
        if not any(n.running() for n in nodes):
            raise AssertionError(
                "every node exited:\n" + "\n".join(n.text()[-2000:] for n in nodes)
            )
        await asyncio.sleep(0.05)
    raise AssertionError("no node became active:\n" + "\n".join(n.text()[-2000:] for n in nodes))


@contextlib.asynccontextmanager
async def ha_pair(
    work: Path,
    server: DevServer,
    make_user: MakeUser,
    make_client: MakeClient,
    database_url: str,
    names: tuple[str, ...] = ("a", "b"),
    *,
    ha_extra: str = "",
    rooms: str = ROOMS,
    start_together: bool = False,
    first_env: dict[str, str] | None = None,
) -> AsyncIterator[HaPair]:
    """Register the people, grant clearances offline (as the CLI does), start the first node
    (it becomes the active) and then the others (standbys), then invite and join everyone.
    With `start_together` every node starts at once (within milliseconds): one must win.
    `first_env`: extra environment for the first node only (a crash point): the others start
    without waiting for it, and whichever becomes active first is waited for."""
    from bot.services.register import ClearanceRegister

    bot_user, admin, officer, member = (make_user(p) for p in ("liaison", "admin", "lo", "nor"))
    await asyncio.to_thread(upgrade, database_url)
    store = Store.from_url(database_url, audit_key_from(DATA_KEY))
    register = ClearanceRegister(store)
    register.grant("cli:test", officer.user_id, "DEU GEHEIM", nationality="DEU")
    register.grant("cli:test", officer.user_id, "NATO SECRET")
    register.grant("cli:test", member.user_id, "NATO SECRET", nationality="NOR")
    env = {
        **os.environ,
        "LIAISON_TEST_PASSWORD": bot_user.password,
        "LIAISON_TEST_PICKLE_KEY": PICKLE_KEY,
        "LIAISON_TEST_DATA_KEY": DATA_KEY,
    }
    nodes: dict[str, Node] = {}
    pair = HaPair(nodes, store, bot_user)
    try:
        for name in names:
            proxy = RecordingProxy(server.base_url)
            await proxy.start()
            folder = work / f"node-{name}"
            folder.mkdir(parents=True)
            config_path = folder / "config.toml"
            write_config(
                config_path,
                server,
                bot_user,
                admin.user_id,
                officer.user_id,
                rooms,
                database_url=database_url,
                data_key=DATA_KEY,
                crypto_store="database",
            )
            text = config_path.read_text().replace(server.base_url, proxy.url)
            config_path.write_text(text + HA.format(node=name) + ha_extra)
            nodes[name] = Node(name, config_path, folder / "bot.log", env, proxy)
        if start_together:
            for node in nodes.values():
                node.start()
            await _first_active(list(nodes.values()))
            for node in nodes.values():
                await node.wait_for_log(f"node {node.name} standing by")
        elif first_env is not None:
            first, *others = nodes.values()
            first.start(**first_env)
            await first.wait_for_log(f"node {first.name} standing by")
            for node in others:
                node.start()
            await _first_active(list(nodes.values()))
        else:
            first, *others = nodes.values()
            first.start()
            await first.wait_for_log(f"node {first.name} active")
            for node in others:
                node.start()
                await node.wait_for_log(f"node {node.name} standing by")
        pair.deu, pair.nato_s = _room_id(store, "deu"), _room_id(store, "nato-s")
        pair.admin = await make_client(admin)
        pair.dm = await open_dm(pair.admin, bot_user.user_id)
        pair.officer, pair.member = await make_client(officer), await make_client(member)
        for client, key in ((pair.officer, "deu"), (pair.member, "nato-s")):
            await talk(pair.admin, pair.dm, f"!invite {client.user_id} {key}", "Invited", 60)
            await client.join(await client.wait_for_invite(timeout=60), timeout=60)
        yield pair
    except BaseException:
        # What each node did, with the failure (the test's folder is gone a few runs later).
        for node in nodes.values():
            print(f"--- {node.name}'s log (last 6000 characters) ---", file=sys.stderr)
            print(node.text()[-6000:], file=sys.stderr)
        raise
    finally:
        for node in nodes.values():
            await node.stop()
            await node.proxy.stop()
        store.close()
