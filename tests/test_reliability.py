"""The reliability guarantees under stress: a SIGKILL mid-stream, a homeserver outage."""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import time
from pathlib import Path

from sqlalchemy import func, select

from bot.devtools.devserver import DevServer, free_port
from bot.devtools.e2ee_client import E2EEClient, cross_sign, open_dm
from bot.storage import IntelItemRow, RelayRow, Store
from tests.bot_harness import ROOMS, BotEnv, enrol, process_scenario, write_config
from tests.matrix_harness import MakeClient, MakeUser
from tests.proxy import CountingProxy
from tests.test_run_cli import SCRIPT

STREAM = 300


def start(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [SCRIPT, "run", "--config", str(config)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def counts(store: Store, room_id: str) -> tuple[int, int, int]:
    """(items stored, distinct source events, sent copies) for a source room."""
    with store.session() as session:
        items = session.scalar(
            select(func.count()).select_from(IntelItemRow).where(IntelItemRow.room_id == room_id)
        )
        distinct = session.scalar(
            select(func.count(func.distinct(IntelItemRow.event_id))).where(
                IntelItemRow.room_id == room_id
            )
        )
        sent = session.scalar(
            select(func.count())
            .select_from(RelayRow)
            .where(RelayRow.kind == "copy", RelayRow.state == "sent")
        )
    return int(items or 0), int(distinct or 0), int(sent or 0)


async def test_sigkill_while_an_officer_streams_300_messages(
    tmp_path: Path, synapse: DevServer, make_user: MakeUser, make_client: MakeClient
) -> None:
    async with process_scenario(tmp_path, synapse, make_user, make_client) as s:
        tag = secrets.token_hex(3)
        phrases = [f"m{tag}-{i:03d}-end" for i in range(STREAM)]

        async def stream() -> None:
            for phrase in phrases:
                await s.officer.send_text(s.deu, f"[GEHEIM // REL TO NATO] {phrase}")

        streaming = asyncio.create_task(stream())
        # kill the bot once part of the stream has been relayed
        await s.member.wait_for_text(s.nato_s, phrases[60], timeout=120)
        s.proc.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(s.proc.wait, 30) == -signal.SIGKILL
        await asyncio.sleep(2)  # the stream goes on while the bot is dead
        s.start()
        await streaming
        for phrase in phrases:
            await s.member.wait_for_text(s.nato_s, phrase, timeout=180)
        await asyncio.sleep(3)  # room for duplicates to show up, if there were any
        texts = s.member.texts(s.nato_s)
        seen = {p: sum(p in t for t in texts) for p in phrases}
        assert {p: n for p, n in seen.items() if n != 1} == {}
        assert counts(s.store, s.deu) == (STREAM, STREAM, STREAM)
        assert s.store.pending_relays() == []


async def test_homeserver_outage_backs_off_and_loses_nothing(tmp_path: Path) -> None:
    server = DevServer(tmp_path / "synapse")
    await asyncio.to_thread(server.start)
    proxy = CountingProxy(server.base_url)
    await proxy.start(free_port())
    clients: list[E2EEClient] = []
    env: BotEnv | None = None
    try:
        users = {
            n: await asyncio.to_thread(server.register, n, f"pw-{n}")
            for n in ("liaison", "admin", "lo", "nor")
        }
        config_path = tmp_path / "config.toml"
        write_config(
            config_path,
            server,
            users["liaison"],
            users["admin"].user_id,
            users["lo"].user_id,
            ROOMS,
        )
        config_path.write_text(config_path.read_text().replace(server.base_url, proxy.url))
        env = BotEnv(server, tmp_path, users["liaison"], users["admin"], users["lo"], config_path)
        await env.start()
        identities: dict = {}
        for name in ("admin", "lo", "nor"):
            client = await E2EEClient.create(server, users[name], tmp_path / f"store-{name}")
            await cross_sign(server, client, identities)
            await client.start()
            clients.append(client)
        admin_c, officer_c, member_c = clients
        dm = await open_dm(admin_c, users["liaison"].user_id)
        await enrol(
            (admin_c, dm),
            [(officer_c.user_id, "DEU GEHEIM", "DEU"), (member_c.user_id, "NATO SECRET", "NOR")],
            [(officer_c, "deu"), (member_c, "nato-s")],
        )
        deu, nato_s = env.room_id("deu"), env.room_id("nato-s")
        before = [f"before-{i}" for i in range(10)]
        after = [f"after-{i}" for i in range(10)]
        for phrase in before:
            await officer_c.send_text(deu, f"[GEHEIM // REL TO NATO] {phrase}")
        for phrase in before:
            await member_c.wait_for_text(nato_s, phrase, timeout=60)

        down_at = time.monotonic()
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(10)
        up_at = time.monotonic()
        await asyncio.to_thread(server.start)
        during = proxy.count_between(down_at, up_at)
        print(f"requests to the dead homeserver in 10 s: {during}")
        # A tight loop would make thousands of requests in 10 s; backing off makes a handful.
        assert during <= 40, f"{during} requests to a dead homeserver in 10 s"
        assert during >= 2, "the bot did not even retry"

        for phrase in after:
            await officer_c.send_text(deu, f"[GEHEIM // REL TO NATO] {phrase}")
        for phrase in after:
            await member_c.wait_for_text(nato_s, phrase, timeout=120)
        await asyncio.sleep(2)
        texts = member_c.texts(nato_s)
        assert {p: sum(p in t for t in texts) for p in before + after} == {
            p: 1 for p in before + after
        }
        assert env.store is not None and env.store.pending_relays() == []
    finally:
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
        if env is not None:
            await env.stop()
        await proxy.stop()
        await asyncio.to_thread(server.stop)
