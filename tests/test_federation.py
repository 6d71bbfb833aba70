"""Across homeservers: the bot on the national server `deu`, NATO's readers on `nato`, both
real Synapses federating over TLS on loopback (a test CA, verification on), each with the
homeserver gate; a third server, `other`, that no managed room admits."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import textwrap
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from nio import MegolmEvent

from bot.devtools.botenv import BotEnv, write_config
from bot.devtools.devserver import DevServer, DevServerError, RegisteredUser
from bot.devtools.e2ee_client import E2EEClient, cross_sign, talk
from bot.devtools.testca import TestCA
from bot.matrix.crosssign import CrossSigningKeys
from bot.services.render import LABEL_KEY
from policy import parse_marking
from policy.adatp4774 import from_json, to_label
from policy.ids import RoomKey, UserId
from tests.bot_harness import (
    audited,
    eventually,
    no_key_for,
    nothing_arrives,
    posted_barrier,
    relayed_barrier,
    text_with,
)


@dataclass
class Servers:
    deu: DevServer
    nato: DevServer
    other: DevServer


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    ca = TestCA.create(tmp_path_factory.mktemp("ca"))
    made = Servers(
        *(
            DevServer(tmp_path_factory.mktemp(name), federation=ca)
            for name in ("deu", "nato", "other")
        )
    )
    started: list[DevServer] = []
    try:
        for server in (made.deu, made.nato, made.other):
            server.start()
            started.append(server)
        yield made
    finally:
        for server in started:
            server.stop()


def _user(server: DevServer, prefix: str) -> RegisteredUser:
    return server.register(f"{prefix}-{secrets.token_hex(3)}", f"pw-{secrets.token_hex(8)}")


@dataclass
class Cast:
    env: BotEnv
    officer: E2EEClient
    reader: E2EEClient
    outsider: RegisteredUser
    identities: dict[str, CrossSigningKeys]
    reader_server: DevServer


@pytest.fixture(scope="module")
async def cast(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cast]:
    deu, nato = servers.deu, servers.nato
    bot_user, admin, officer = (_user(deu, p) for p in ("liaison", "secadmin", "lo-deu"))
    rooms = textwrap.dedent(
        f"""
        [[rooms]]
        key = "deu"
        name = "DEU national cell"
        label = "DEU GEHEIM"

        [[rooms]]
        key = "nato-s"
        name = "NATO SECRET liaison"
        label = "NATO SECRET"
        servers = ["{deu.server_name}", "{nato.server_name}"]

        [[routes]]
        from = "deu"
        to = ["nato-s"]
        """
    )
    workdir = tmp_path_factory.mktemp("fedbot")
    config_path = workdir / "config.toml"
    write_config(config_path, deu, bot_user, admin.user_id, officer.user_id, rooms)
    env = BotEnv(deu, workdir, bot_user, admin, officer, config_path)
    await env.start()
    identities: dict[str, CrossSigningKeys] = {}
    clients: list[E2EEClient] = []
    try:
        bot = env.bot
        assert bot is not None
        reader_user = _user(nato, "analyst-nor")
        for user_id, level, nation in (
            (officer.user_id, "DEU GEHEIM", "DEU"),
            (officer.user_id, "NATO SECRET", "DEU"),
            (reader_user.user_id, "NATO SECRET", "NOR"),
        ):
            await bot.commands.grant(
                UserId(admin.user_id),
                UserId(user_id),
                level,
                nationality=nation,
                expires=None,
                caveats=(),
            )
        officer_client = await _client(deu, officer, tmp_path_factory, identities, clients)
        reader = await _client(nato, reader_user, tmp_path_factory, identities, clients)
        for client, key in (
            (officer_client, "deu"),
            (officer_client, "nato-s"),
            (reader, "nato-s"),
        ):
            outcome = await bot.commands.invite(
                UserId(admin.user_id), UserId(client.user_id), RoomKey(key)
            )
            assert outcome.invited, outcome
            await client.join(await client.wait_for_invite(timeout=60), timeout=60)
        yield Cast(env, officer_client, reader, _user(servers.other, "outsider"), identities, nato)
    finally:
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
        await env.stop()


async def _client(
    server: DevServer,
    user: RegisteredUser,
    tmp_path_factory: pytest.TempPathFactory,
    identities: dict[str, CrossSigningKeys],
    clients: list[E2EEClient],
) -> E2EEClient:
    client = await E2EEClient.create(server, user, tmp_path_factory.mktemp("nio-fed"))
    clients.append(client)
    await cross_sign(server, client, identities)
    await client.start()
    return client


async def test_a_tagged_message_reaches_readers_on_the_nato_server(cast: Cast) -> None:
    env = cast.env
    assert env.bot is not None
    phrase = f"ferry-{secrets.token_hex(3)}"
    receipt = await talk(
        cast.officer,
        env.room_id("deu"),
        f"[GEHEIM // REL TO NATO] {phrase} at pier 4",
        "Relayed to nato-s",
        timeout=60,
    )
    assert "as NATO SECRET" in receipt.body
    copy = await cast.reader.wait_for_text(env.room_id("nato-s"), phrase, timeout=60)
    assert copy.body.splitlines()[0] == "NATO SECRET — originator: DEU GEHEIM // REL TO NATO"
    meta = from_json(copy.source["content"][LABEL_KEY])
    assert to_label(meta.originator) == parse_marking("DEU GEHEIM // REL TO NATO")


async def test_the_room_admits_only_its_servers(cast: Cast, servers: Servers) -> None:
    env = cast.env
    bot = env.bot
    assert bot is not None
    admin, outsider = UserId(env.admin.user_id), UserId(cast.outsider.user_id)
    await bot.commands.grant(
        admin, outsider, "NATO SECRET", nationality="NOR", expires=None, caveats=()
    )
    outcome = await bot.commands.invite(admin, outsider, RoomKey("nato-s"))
    assert not outcome.invited
    reason = outcome.decision.reason
    assert f"homeserver {servers.other.server_name} is not allowed in the room" in reason
    # The room's ACL says the same to every server in it (by host: federation strips ports;
    # a third server on the same host is told apart by the rule and the gate above).
    state = await bot.gateway.state(env.room_id("nato-s"))
    acl = state[("m.room.server_acl", "")].content
    assert acl == {
        "allow": sorted(["127.0.0.1", servers.deu.server_name, servers.nato.server_name]),
        "deny": [],
        "allow_ip_literals": True,
    }
    # And the homeserver gate refuses it too, whoever asks (a stolen bot token, say).
    error = await asyncio.to_thread(_refused_invite, servers.deu, env, outsider)
    assert f"homeserver {servers.other.server_name} is not allowed" in error


def _refused_invite(server: DevServer, env: BotEnv, user_id: str) -> str:
    login = server.request(
        "POST",
        "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": env.bot_user.user_id},
            "password": env.bot_user.password,
        },
    )
    room = urllib.parse.quote(env.room_id("nato-s"), safe="")
    try:
        server.request(
            "POST",
            f"/_matrix/client/v3/rooms/{room}/invite",
            {"user_id": user_id},
            token=login["access_token"],
        )
    except DevServerError as exc:
        return str(exc)
    raise AssertionError("the homeserver let the invite through")


async def test_an_outage_of_the_nato_server_loses_and_doubles_nothing(
    cast: Cast, servers: Servers
) -> None:
    """Ten seconds without the NATO server: copies sent meanwhile reach its readers once
    when it is back."""
    env = cast.env
    nato_room = env.room_id("nato-s")
    # The reader reads a copy before the outage: the bot knows its devices (a key query over
    # federation) and has shared the room key. Without that, run alone, the bot met the
    # reader first while its server was down, could not learn its devices, and the copies
    # stayed unreadable to it (a member's client then asks for the key; this one does not).
    warm = f"before-outage-{secrets.token_hex(3)}"
    await talk(
        cast.officer, env.room_id("deu"), f"[GEHEIM // REL TO NATO] {warm}",
        "Relayed to nato-s", timeout=60,
    )  # fmt: skip
    await cast.reader.wait_for_text(nato_room, warm, timeout=60)
    phrases = [f"outage-{n}-{secrets.token_hex(3)}" for n in range(3)]
    mark = cast.reader.event_count(nato_room)
    await asyncio.to_thread(servers.nato.stop)
    try:
        for phrase in phrases:
            await talk(
                cast.officer, env.room_id("deu"), f"[GEHEIM // REL TO NATO] {phrase}",
                "Relayed to nato-s", timeout=60,
            )  # fmt: skip
        await asyncio.sleep(10)
    finally:
        await asyncio.to_thread(servers.nato.start)
    for phrase in phrases:
        await cast.reader.wait_for_text(nato_room, phrase, timeout=90)
    await nothing_arrives(
        cast.reader,
        nato_room,
        lambda e: any(text_with(phrase)(e) for phrase in phrases),
        since=mark,
        already=len(phrases),
        barrier=relayed_barrier(cast.officer, env.room_id("deu"), "GEHEIM // REL TO NATO"),
        timeout=90,
        what="copies sent during the outage",
    )
    texts = cast.reader.texts(nato_room)
    for phrase in phrases:
        assert sum(phrase in t for t in texts) == 1, phrase


async def test_a_remote_identity_reset_stops_key_sharing(
    cast: Cast, servers: Servers, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A reader of its own on the NATO server changes identity (the module's reader keeps
    its own, so the tests run in any order). The bot sees it over federation, alerts, and
    shares no further key with that reader's devices until an admin confirms."""
    env = cast.env
    bot = env.bot
    assert bot is not None
    nato_room = env.room_id("nato-s")
    reader_user = _user(servers.nato, "analyst-reset")
    reader_id = UserId(reader_user.user_id)
    await bot.commands.grant(
        UserId(env.admin.user_id),
        reader_id,
        "NATO SECRET",
        nationality="NOR",
        expires=None,
        caveats=(),
    )
    clients: list[E2EEClient] = []
    try:
        reader = await _client(
            servers.nato, reader_user, tmp_path_factory, cast.identities, clients
        )
        outcome = await bot.commands.invite(UserId(env.admin.user_id), reader_id, RoomKey("nato-s"))
        assert outcome.invited, outcome
        await reader.join(await reader.wait_for_invite(timeout=60), timeout=60)
        before = f"before-reset-{secrets.token_hex(3)}"
        await talk(
            cast.officer, env.room_id("deu"), f"[GEHEIM // REL TO NATO] {before}",
            "Relayed to nato-s", timeout=60,
        )  # fmt: skip
        await reader.wait_for_text(nato_room, before, timeout=60)
        await eventually(
            lambda: (r := bot.membership.record_of(reader_id)) and r.identity_key,
            what="the reader's master key pinned at first sight",
        )
        await cross_sign(servers.nato, reader, cast.identities, reset=True)
        await audited(env, "identity.changed", reader_id, timeout=60)
        mark = reader.event_count(nato_room)
        phrase = f"after-reset-{secrets.token_hex(3)}"
        receipt = await talk(
            cast.officer, env.room_id("deu"), f"[GEHEIM // REL TO NATO] {phrase}",
            "Relayed to nato-s", timeout=60,
        )  # fmt: skip
        assert env.store is not None
        source = receipt.source["content"]["m.relates_to"]["m.in_reply_to"]["event_id"]
        (copy,) = env.store.copies_of(source)
        assert copy.target_event_id is not None
        event = await reader.wait_for(
            nato_room, lambda e: e.event_id == copy.target_event_id, 60, after=mark
        )
        assert isinstance(event, MegolmEvent), "the reset identity still got the room key"
        await no_key_for(
            bot, reader, nato_room, copy.target_event_id, barrier=posted_barrier(bot, nato_room)
        )
        assert not any(phrase in t for t in reader.texts(nato_room))
    finally:
        for client in clients:  # out of the module's room, whatever happened
            with contextlib.suppress(Exception):
                await client.client.room_leave(nato_room)
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
