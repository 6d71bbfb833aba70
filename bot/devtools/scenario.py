"""The relay scenario the latency and throughput benchmarks measure, set up once here.

A throwaway Synapse; the bot in-process (bot.devtools.botenv.BotEnv) managing a national room
`deu` (DEU GEHEIM) with a route to `nato-s` (NATO SECRET); an admin, a German liaison officer
(cleared for both rooms, member of both) and a Norwegian NATO member (in nato-s only), each
with a cross-signed E2EE client (bot.devtools.e2ee_client). `warm_up()` sends a few messages
both ways so that room keys and Olm sessions exist before anything is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.devtools.botenv import ROOMS, BotEnv, write_config
from bot.devtools.devserver import DevServer
from bot.devtools.e2ee_client import E2EEClient, cross_sign, open_dm, talk
from bot.devtools.testca import TestCA

RELEASABLE = "[GEHEIM // REL TO NATO]"  # a DEU GEHEIM marking the bot relays to nato-s


@dataclass
class RelayScenario:
    server: DevServer
    env: BotEnv
    admin: E2EEClient
    officer: E2EEClient
    member: E2EEClient
    dm: str  # the admin's direct room with the bot
    deu: str  # room ids
    nato_s: str

    async def warm_up(self, rounds: int = 3) -> None:
        """Both paths once end to end: room keys shared, Olm sessions set up."""
        for i in range(rounds):
            await self.officer.send_text(self.nato_s, f"warm-direct-{i}")
            await self.member.wait_for_text(self.nato_s, f"warm-direct-{i}", timeout=60)
            await self.officer.send_text(self.deu, f"{RELEASABLE} warm-relay-{i}")
            await self.member.wait_for_text(self.nato_s, f"warm-relay-{i}", timeout=60)


def federated_rooms(national: DevServer, nato: DevServer) -> str:
    """ROOMS, with nato-s open to the NATO server's members as well as the bot's own."""
    return ROOMS.replace(
        'label = "NATO SECRET"\n',
        f'label = "NATO SECRET"\nservers = ["{national.server_name}", "{nato.server_name}"]\n',
        1,
    )


@asynccontextmanager
async def relay_scenario(
    *,
    federated: bool = False,
    database_url: str = "sqlite:///bot.db",
    crypto_store: str = "crypto",
) -> AsyncIterator[RelayScenario]:
    """The homeserver, the bot, the people, their clearances and rooms; torn down on exit.

    `federated`: two homeservers federating over TLS on loopback (bot.devtools.testca): the
    bot, the admin and the officer on the national one, the NATO member on NATO's.
    `database_url` and `crypto_store`: the bot's storage, as in its config (a relative
    SQLite path is in the scenario's throwaway folder; "database" needs PostgreSQL)."""
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        ca = TestCA.create(work / "ca") if federated else None
        server = stack.enter_context(DevServer(work / "synapse", federation=ca))
        remote = (
            stack.enter_context(DevServer(work / "synapse-nato", federation=ca))
            if federated
            else server
        )
        bot_user = server.register("liaison", "pw-bot")
        admin = server.register("admin", "pw-admin")
        officer = server.register("officer", "pw-officer")
        member = remote.register("member", "pw-member")
        rooms = federated_rooms(server, remote) if federated else ROOMS
        write_config(
            work / "config.toml",
            server,
            bot_user,
            admin.user_id,
            officer.user_id,
            rooms,
            database_url=database_url,
            crypto_store=crypto_store,
        )
        env = BotEnv(server, work, bot_user, admin, officer, work / "config.toml")
        await env.start()
        identities: dict[str, Any] = {}
        clients: list[E2EEClient] = []
        try:
            for user, home in ((admin, server), (officer, server), (member, remote)):
                client = await E2EEClient.create(home, user, work / f"store-{user.user_id}")
                await cross_sign(home, client, identities)
                await client.start()
                clients.append(client)
            admin_c, officer_c, member_c = clients
            dm = await open_dm(admin_c, bot_user.user_id)
            for user_id, level, nation in (
                (officer.user_id, "DEU GEHEIM", "DEU"),
                (officer.user_id, "NATO SECRET", "DEU"),
                (member.user_id, "NATO SECRET", "NOR"),
            ):
                await talk(
                    admin_c,
                    dm,
                    f'!clearance grant {user_id} "{level}" --nationality {nation}',
                    "Clearance updated",
                )
            for client, key in ((officer_c, "deu"), (officer_c, "nato-s"), (member_c, "nato-s")):
                await talk(admin_c, dm, f"!invite {client.user_id} {key}", "Invited")
                await client.join(await client.wait_for_invite(timeout=60), timeout=60)
            yield RelayScenario(
                server,
                env,
                admin_c,
                officer_c,
                member_c,
                dm,
                env.room_id("deu"),
                env.room_id("nato-s"),
            )
        finally:
            await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
            await env.stop()
