"""The bot's own enforcement of membership, on a Synapse without the homeserver gate.

README, "Membership follows the clearance register": anyone who joins or is invited other
than through `may_join` is removed at once. With the gate loaded (every other integration
test), the server refuses such an invite or join itself, so `Membership.on_member_event`
never has anything to remove; here nothing but the bot keeps its rooms closed. People get
in behind its back the ways the README names: a server admin hands a member power
(`make_room_admin`), and someone holding the bot's password opens the room.

The sweep runs hourly in this module, so every removal seen here is the one made on the
member event ("at once"), not a sweep's.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from nio import Event, JoinError, RoomMemberEvent

from bot.devtools.devserver import DevServer, DevServerError
from bot.matrix.crosssign import CrossSigningKeys
from bot.services.membership import KICK_REASON
from bot.startup import StartupError
from policy.ids import UserId
from tests.bot_harness import BotEnv, answered_barrier, audited, enrol, nothing_arrives
from tests.matrix_harness import E2EEClient, MakeClient, MakeUser, clients_on

BOT_SWEEP_INTERVAL = "1h"
LABEL_EVENT = "io.github.liaison_bot.label"


def _path(room_id: str, *parts: str) -> str:
    quoted = "/".join(urllib.parse.quote(p, safe="") for p in (room_id, *parts))
    return f"/_matrix/client/v3/rooms/{quoted}"


async def _request(
    server: DevServer, method: str, path: str, body: dict[str, Any] | None, token: str
) -> dict[str, Any]:
    """A client-API call off the event loop (the bot runs on it)."""
    return await asyncio.to_thread(server.request, method, path, body, token=token)


async def _state(server: DevServer, token: str, room_id: str) -> dict[tuple[str, str], Any]:
    """The room's current state as the server holds it, whole events by (type, state key)."""
    events: Any = await _request(server, "GET", _path(room_id, "state"), None, token)
    assert isinstance(events, list), events  # this endpoint answers with a list
    return {(e["type"], e["state_key"]): e for e in events}


def _left(user_id: str) -> Callable[[Event], bool]:
    return lambda e: (
        isinstance(e, RoomMemberEvent) and e.state_key == user_id and e.membership == "leave"
    )


@pytest.fixture(scope="module")
async def insider(
    bot_env_without_gate: BotEnv,
    make_user_without_gate: MakeUser,
    synapse_without_gate: DevServer,
    tmp_path_factory: pytest.TempPathFactory,
    identities: dict[str, CrossSigningKeys],
) -> AsyncIterator[E2EEClient]:
    """A cleared member of nato-s whom a server admin gave the bot's power there behind
    its back (without the gate, Synapse lets the admin API do it): they can invite."""
    env = bot_env_without_gate
    user = make_user_without_gate("insider")
    async with clients_on(synapse_without_gate, tmp_path_factory, identities) as make:
        client = await make(user)
        (nato_s,) = await enrol(env, [(user.user_id, "NATO SECRET", "POL")], [(client, "nato-s")])
        server_admin = make_user_without_gate("hsadmin", admin=True)
        await asyncio.to_thread(
            synapse_without_gate.make_room_admin,
            server_admin.access_token,
            nato_s,
            user.user_id,
        )
        yield client


async def test_an_invite_made_behind_the_bots_back_is_rescinded_at_once(
    bot_env_without_gate: BotEnv,
    insider: E2EEClient,
    make_user_without_gate: MakeUser,
    make_client_without_gate: MakeClient,
) -> None:
    env = bot_env_without_gate
    nato_s = env.room_id("nato-s")
    outsider = make_user_without_gate("outsider")
    client = await make_client_without_gate(outsider)
    await insider.invite(nato_s, outsider.user_id)  # the server lets them: no gate
    rescinded = await client.wait_for(nato_s, _left(outsider.user_id), 30)
    assert isinstance(rescinded, RoomMemberEvent)
    assert rescinded.sender == env.bot_user.user_id
    entry = await audited(env, "member.removed", outsider.user_id)
    assert entry.actor == env.bot_user.user_id
    assert entry.detail == {
        "room": "nato-s",
        "why": "invite event",  # on the event, not at a sweep
        "reason": f"no clearance on record for {outsider.user_id}",
        "reason_code": "clearance.none",
    }
    state = await _state(env.server, insider.client.access_token, nato_s)
    member = state[("m.room.member", outsider.user_id)]
    assert member["content"]["membership"] == "leave", member  # the invite is rescinded
    assert member["sender"] == env.bot_user.user_id
    # Kick reasons are not encrypted: no marking, no room name or key.
    assert member["content"]["reason"] == KICK_REASON == "not cleared for this room"
    # The invite can no longer be taken up.
    with pytest.raises(DevServerError, match="M_FORBIDDEN"):
        await _request(env.server, "POST", _path(nato_s, "join"), {}, outsider.access_token)


async def test_someone_who_joins_behind_the_bots_back_is_removed_at_once(
    bot_env_without_gate: BotEnv,
    make_user_without_gate: MakeUser,
    make_client_without_gate: MakeClient,
) -> None:
    """Someone holding the bot's password (a new device of its account) makes the room
    joinable; an uncleared person joins, and the bot removes them."""
    env = bot_env_without_gate
    server, nato_s = env.server, env.room_id("nato-s")
    login = await _request(
        server,
        "POST",
        "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": env.bot_user.user_id},
            "password": env.bot_user.password,
        },
        "",
    )
    thief = login["access_token"]
    join_rules = _path(nato_s, "state", "m.room.join_rules", "")
    await _request(server, "PUT", join_rules, {"join_rule": "public"}, thief)
    try:
        joiner = make_user_without_gate("joiner")
        client = await make_client_without_gate(joiner)
        joined = await client.client.join(nato_s)
        assert not isinstance(joined, JoinError), joined
        kick = await client.wait_for(nato_s, _left(joiner.user_id), 30)
        assert isinstance(kick, RoomMemberEvent)
        assert kick.sender == env.bot_user.user_id
        assert kick.content.get("reason") == KICK_REASON  # no marking, no room name
        entry = await audited(env, "member.removed", joiner.user_id)
        assert entry.detail == {
            "room": "nato-s",
            "why": "join event",
            "reason": f"no clearance on record for {joiner.user_id}",
            "reason_code": "clearance.none",
        }
        assert nato_s not in await client.joined_rooms()
    finally:
        await _request(server, "PUT", join_rules, {"join_rule": "invite"}, thief)
        await _request(server, "POST", "/_matrix/client/v3/logout", {}, thief)


async def test_a_cleared_person_invited_behind_the_bots_back_stays_and_reads(
    bot_env_without_gate: BotEnv,
    insider: E2EEClient,
    make_user_without_gate: MakeUser,
    make_client_without_gate: MakeClient,
) -> None:
    """The rule is `may_join`, not who invited: a cleared person invited by someone else is
    judged like one the bot invites, stays, and gets the room key for what follows."""
    env = bot_env_without_gate
    assert env.bot is not None
    nato_s = env.room_id("nato-s")
    colleague = make_user_without_gate("colleague")
    await enrol(env, [(colleague.user_id, "NATO SECRET", "DNK")])
    client = await make_client_without_gate(colleague)
    await insider.invite(nato_s, colleague.user_id)
    assert await client.wait_for_invite() == nato_s
    await client.join(nato_s)
    # The bot handles a room's events in order: once it has answered a tagged message sent
    # after the join, it has judged the invite and the join.
    await nothing_arrives(
        client,
        nato_s,
        _left(colleague.user_id),
        since=0,
        barrier=answered_barrier(insider, nato_s, "NATO SECRET"),
        what="the cleared person's removal",
    )
    entries = await env.bot.commands.audit_recent(50)
    assert not [
        e for e in entries if e.action == "member.removed" and e.subject == colleague.user_id
    ]
    assert env.bot.membership.is_member(UserId(colleague.user_id), env.bot.rooms.by_key["nato-s"])


async def test_lowering_a_rooms_label_in_the_config_is_refused(
    bot_env_without_gate: BotEnv, insider: E2EEClient
) -> None:
    """README, Running the bot: "lowering a room's label is refused (make a new room)". On
    this server nothing else would stop the lowered label event (the gate refuses one below
    the register's), so the bot's own check is what is tested. The start stops with the
    reason, audited; the room, its label event and topic, and the register's row stay as
    they were."""
    env = bot_env_without_gate
    assert env.store is not None
    nato_s = env.room_id("nato-s")
    token = insider.client.access_token
    before = await _state(env.server, token, nato_s)
    row_before = env.store.room("nato-s")
    config = env.config_path.read_text()
    lowered = config.replace('label = "NATO SECRET"', 'label = "NATO CONFIDENTIAL"')
    assert lowered != config
    await env.stop()
    env.config_path.write_text(lowered)
    try:
        with pytest.raises(StartupError) as refused:
            await env.start()
        assert env.store is not None
        row_refused = env.store.room("nato-s")
        audit = [e for e in env.store.recent_audit(20) if e.action == "room.provision.refused"]
    finally:  # put the config back, whatever happened (a restart here could hide it)
        await env.stop()
        env.config_path.write_text(config)
    assert str(refused.value) == (
        "rooms[1]: room 'nato-s': lowering its label (from rank 3, NATO SECRET to "
        "NATO CONFIDENTIAL) is refused: make a new room instead"
    )
    assert row_refused == row_before
    assert [(e.subject, e.detail) for e in audit] == [
        (
            "nato-s",
            {
                "room_id": nato_s,
                "reason": str(refused.value).removeprefix("rooms[1]: "),
                "reason_code": "label.lowering_refused",
            },
        )
    ]
    await env.start()
    assert env.store is not None
    after = await _state(env.server, token, nato_s)
    for key in ((LABEL_EVENT, ""), ("m.room.topic", ""), ("m.room.name", "")):
        assert after[key]["event_id"] == before[key]["event_id"], key  # never re-sent
    assert after[(LABEL_EVENT, "")]["content"]["banner"] == "NATO SECRET"
    assert env.store.room("nato-s") == row_before
