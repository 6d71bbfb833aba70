"""The reliability guarantees under stress: a SIGKILL mid-stream, a homeserver outage."""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from pathlib import Path

from aiohttp import web
from sqlalchemy import func, select

from bot.devtools.devserver import DevServer
from bot.devtools.e2ee_client import E2EEClient, cross_sign, open_dm
from bot.devtools.proxy import CountingProxy
from bot.matrix.crosssign import CrossSigningKeys
from bot.storage import IntelItemRow, RelayRow, Store
from tests.bot_harness import (
    ROOMS,
    BotEnv,
    enrol,
    eventually,
    nothing_arrives,
    process_scenario,
    relayed_barrier,
    text_with,
    write_config,
)
from tests.matrix_harness import MakeClient, MakeUser

STREAM = 300


class SwitchableProxy(CountingProxy):
    """The counting proxy, which can also cut the bot off while the homeserver is still up,
    answering as it does for a dead homeserver: messages sent meanwhile wait there, unseen
    by the bot, in flight through the whole outage."""

    down = False

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if not self.down:
            return await super()._forward(request)
        self.times.append(time.monotonic())
        return web.json_response(
            {"errcode": "M_UNKNOWN", "error": "homeserver unreachable"}, status=502
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

        mark = s.member.event_count(s.nato_s)
        streaming = asyncio.create_task(stream())
        # kill the bot once part of the stream has been relayed
        await s.member.wait_for_text(s.nato_s, phrases[60], timeout=120)
        s.proc.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(s.proc.wait, 30) == -signal.SIGKILL
        sent_at_kill = len(s.officer.texts(s.deu))

        def streamed_on() -> bool:  # the stream goes on while the bot is dead
            return streaming.done() or len(s.officer.texts(s.deu)) >= sent_at_kill + 20

        await eventually(streamed_on, 60, "20 more messages sent while the bot is dead")
        s.start()
        await streaming
        for phrase in phrases:
            await s.member.wait_for_text(s.nato_s, phrase, timeout=180)
        await nothing_arrives(
            s.member,
            s.nato_s,
            text_with(f"m{tag}-"),
            since=mark,
            already=STREAM,
            barrier=relayed_barrier(s.officer, s.deu, "GEHEIM // REL TO NATO"),
            timeout=120,
            what="copies of the stream",
        )
        texts = s.member.texts(s.nato_s)
        seen = {p: sum(p in t for t in texts) for p in phrases}
        assert {p: n for p, n in seen.items() if n != 1} == {}
        assert counts(s.store, s.deu) == (STREAM + 1,) * 3  # and the barrier
        assert s.store.pending_relays() == []


async def test_homeserver_outage_backs_off_and_loses_nothing(tmp_path: Path) -> None:
    server = DevServer(tmp_path / "synapse")
    await asyncio.to_thread(server.start)
    proxy = SwitchableProxy(server.base_url)
    await proxy.start()
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
        identities: dict[str, CrossSigningKeys] = {}
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
        mark = member_c.event_count(nato_s)
        before = [f"before-{i}" for i in range(10)]
        during = [f"during-{i}" for i in range(5)]
        after = [f"after-{i}" for i in range(10)]
        for phrase in before:
            await officer_c.send_text(deu, f"[GEHEIM // REL TO NATO] {phrase}")
        for phrase in before:
            await member_c.wait_for_text(nato_s, phrase, timeout=60)

        down_at = time.monotonic()
        proxy.down = True  # the outage begins for the bot; the officer can still post
        for phrase in during:  # in flight: on the homeserver, not yet seen by the bot
            await officer_c.send_text(deu, f"[GEHEIM // REL TO NATO] {phrase}")
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(10)  # the outage, measured: not a wait for something to happen
        await asyncio.to_thread(server.start)
        proxy.down = False
        up_at = time.monotonic()
        requests = proxy.count_between(down_at, up_at)
        print(f"requests to the dead homeserver in {up_at - down_at:.0f} s: {requests}")
        # A tight loop would make thousands of requests in 10 s; backing off makes a handful.
        assert requests <= 40, f"{requests} requests to a dead homeserver in {up_at - down_at} s"
        assert requests >= 2, "the bot did not even retry"

        for phrase in after:
            await officer_c.send_text(deu, f"[GEHEIM // REL TO NATO] {phrase}")
        for phrase in during + after:
            await member_c.wait_for_text(nato_s, phrase, timeout=120)
        everything = before + during + after
        await nothing_arrives(
            member_c,
            nato_s,
            lambda e: any(text_with(p)(e) for p in everything),
            since=mark,
            already=len(everything),
            barrier=relayed_barrier(officer_c, deu, "GEHEIM // REL TO NATO"),
            timeout=120,
            what="copies across the outage",
        )
        texts = member_c.texts(nato_s)
        assert {p: sum(p in t for t in texts) for p in everything} == {p: 1 for p in everything}
        assert env.store is not None and env.store.pending_relays() == []
    finally:
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
        if env is not None:
            await env.stop()
        await proxy.stop()
        await asyncio.to_thread(server.stop)
