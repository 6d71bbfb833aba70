"""Server-side enforcement against a real Synapse running the gate (bot.gate), as every
integration test's homeserver does: a stolen bot password, a server admin, a member with
full power and a register nobody can read all meet the same refusal the bot would give."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from bot.devtools.botenv import SECRETS, BotEnv
from bot.devtools.devserver import DevServer, DevServerError, RegisteredUser
from bot.gate.config import register_entry
from bot.gate.rules import LABEL_EVENT
from bot.services.rooms import label_content
from bot.storage import Store, audit_key_from
from policy import make_room, parse_marking
from policy.ids import UserId
from tests.bot_harness import stopped
from tests.matrix_harness import MakeUser

# A label event as a bot writes it (the gate refuses any other shape, even from a bot).
NATO_SECRET_LABEL = label_content(make_room(parse_marking("NATO SECRET")))


@pytest.fixture(scope="module")
def bot_env(bot_env: BotEnv) -> BotEnv:
    """The harness's bot, its register entry carrying register_key (as `gate synapse-config`
    prints it): every test here meets a gate that verifies the rows it reads."""
    bot_env.server.add_register(register_entry(bot_env.config), data_key=SECRETS.data_key)
    return bot_env


def _q(room_id: str) -> str:
    return urllib.parse.quote(room_id, safe="")


async def _call(
    server: DevServer, method: str, path: str, body: dict[str, Any] | None, token: str
) -> dict[str, Any]:
    return await asyncio.to_thread(server.request, method, path, body, token=token)


async def _refused(
    server: DevServer, method: str, path: str, body: dict[str, Any] | None, token: str
) -> str:
    """The error of a request the server must refuse with 403."""
    with pytest.raises(DevServerError) as info:
        await _call(server, method, path, body, token)
    message = str(info.value)
    assert "HTTP 403" in message, message
    return message


async def _stolen_login(server: DevServer, user: RegisteredUser) -> str:
    """A new device logged in with the bot's password, as a thief would."""
    reply = await asyncio.to_thread(
        server.request,
        "POST",
        "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user.user_id},
            "password": user.password,
            "initial_device_display_name": "not the bot",
        },
    )
    token: str = reply["access_token"]
    return token


async def _invite(server: DevServer, token: str, room_id: str, user_id: str) -> dict[str, Any]:
    return await _call(
        server,
        "POST",
        f"/_matrix/client/v3/rooms/{_q(room_id)}/invite",
        {"user_id": user_id},
        token,
    )


async def _membership(server: DevServer, token: str, room_id: str, user_id: str) -> str | None:
    """The user's membership as a member of the room (`token`'s owner) reads it; None only
    when the room has no member event for them. Any other error (a 403 to a reader who is not
    in the room) fails the test: it would read as "not a member" whatever the truth."""
    path = f"/_matrix/client/v3/rooms/{_q(room_id)}/state/m.room.member/{_q(user_id)}"
    try:
        reply = await _call(server, "GET", path, None, token)
    except DevServerError as exc:
        if "HTTP 404 M_NOT_FOUND" in str(exc):
            return None
        raise
    membership: str = reply["membership"]
    return membership


async def _members(server: DevServer, token: str, room_id: str) -> dict[str, str]:
    """Every member event of the room (joined, invited, left, banned), user -> membership."""
    path = f"/_matrix/client/v3/rooms/{_q(room_id)}/members"
    reply = await _call(server, "GET", path, None, token)
    return {e["state_key"]: e["content"]["membership"] for e in reply["chunk"]}


async def test_a_stolen_bot_password_cannot_invite_the_uncleared(
    bot_env: BotEnv, make_user: MakeUser
) -> None:
    server, bot = bot_env.server, bot_env.bot
    assert bot is not None
    room_id = bot_env.room_id("deu")
    token = await _stolen_login(server, bot_env.bot_user)
    outsider = make_user("outsider")
    error = await _refused(
        server,
        "POST",
        f"/_matrix/client/v3/rooms/{_q(room_id)}/invite",
        {"user_id": outsider.user_id},
        token,
    )
    assert f"no clearance on record for {outsider.user_id}" in error
    assert "deu (DEU GEHEIM)" in error
    # Nor can the outsider walk in.
    error = await _refused(
        server, "POST", f"/_matrix/client/v3/join/{_q(room_id)}", {}, outsider.access_token
    )
    assert f"no clearance on record for {outsider.user_id}" in error
    # A cleared person is let through: the gate refuses what the rules refuse, nothing more.
    cleared = make_user("cleared")
    await bot.commands.grant(
        UserId(bot_env.admin.user_id),
        UserId(cleared.user_id),
        "DEU GEHEIM",
        nationality="DEU",
        expires=None,
        caveats=(),
    )
    await _invite(server, token, room_id, cleared.user_id)
    assert await _membership(server, token, room_id, cleared.user_id) == "invite"
    # Someone cleared below the room is refused with the rule's own reason.
    low = make_user("low")
    await bot.commands.grant(
        UserId(bot_env.admin.user_id),
        UserId(low.user_id),
        "DEU VS-VERTRAULICH",
        nationality="DEU",
        expires=None,
        caveats=(),
    )
    error = await _refused(
        server,
        "POST",
        f"/_matrix/client/v3/rooms/{_q(room_id)}/invite",
        {"user_id": low.user_id},
        token,
    )
    assert "is below the room's DEU GEHEIM" in error


async def test_with_the_bot_stopped_the_server_still_refuses(
    bot_env: BotEnv, make_user: MakeUser
) -> None:
    server = bot_env.server
    room_id = bot_env.room_id("nato-s")
    config = bot_env.config
    async with stopped(bot_env):
        token = await _stolen_login(server, bot_env.bot_user)
        outsider = make_user("outsider")
        error = await _refused(
            server,
            "POST",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/invite",
            {"user_id": outsider.user_id},
            token,
        )
        assert f"no clearance on record for {outsider.user_id}" in error
        # An admin grants from the CLI while the bot is down; the gate reads it at once.
        cleared = make_user("cleared")
        store = Store.from_url(config.database_url(), audit_key_from(SECRETS.data_key))
        try:
            await asyncio.to_thread(
                store.grant,
                bot_env.admin.user_id,
                cleared.user_id,
                "NATO",
                "NATO SECRET",
                3,
                nationality="POL",
            )
        finally:
            store.close()
        await _invite(server, token, room_id, cleared.user_id)
        await _call(
            server, "POST", f"/_matrix/client/v3/join/{_q(room_id)}", {}, cleared.access_token
        )
        assert await _membership(server, token, room_id, cleared.user_id) == "join"


async def test_a_server_admin_cannot_force_the_uncleared_in(
    bot_env: BotEnv, make_user: MakeUser
) -> None:
    """Synapse lets server admins past spam checks; the event check still refuses them."""
    server = bot_env.server
    room_id = bot_env.room_id("deu")
    admin = make_user("hsadmin", admin=True)
    outsider = make_user("outsider")
    error = await _refused(
        server,
        "POST",
        f"/_synapse/admin/v1/join/{_q(room_id)}",
        {"user_id": outsider.user_id},
        admin.access_token,
    )
    assert f"no clearance on record for {outsider.user_id}" in error
    # make_room_admin sends the power change as the room's most powerful local member, the
    # bot: refused for its content, whoever it is for.
    error = await _refused(
        server,
        "POST",
        f"/_synapse/admin/v1/rooms/{_q(room_id)}/make_room_admin",
        {"user_id": admin.user_id},
        admin.access_token,
    )
    assert f"{admin.user_id} would hold power only the bot may hold" in error
    # Read as the bot's account, a member of the room (the server admin is not, and would be
    # refused the room's state: that refusal must not read as "not a member").
    bot_token = await _stolen_login(server, bot_env.bot_user)
    levels = await _call(
        server, "GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/state/m.room.power_levels/", None,
        bot_token,
    )  # fmt: skip
    assert admin.user_id not in levels.get("users", {}), "no power was left behind"
    members = await _members(server, bot_token, room_id)
    assert members[bot_env.bot_user.user_id] == "join"  # the read sees the room's members
    assert (members.get(outsider.user_id), members.get(admin.user_id)) == (None, None)
    assert await _membership(server, bot_token, room_id, outsider.user_id) is None


async def test_only_the_bot_changes_the_label_and_the_rooms_rules(
    bot_env: BotEnv, make_user: MakeUser
) -> None:
    server, bot = bot_env.server, bot_env.bot
    assert bot is not None
    room_id = bot_env.room_id("deu")
    token = await _stolen_login(server, bot_env.bot_user)
    member = make_user("member")
    await bot.commands.grant(
        UserId(bot_env.admin.user_id),
        UserId(member.user_id),
        "DEU GEHEIM",
        nationality="DEU",
        expires=None,
        caveats=(),
    )
    await _invite(server, token, room_id, member.user_id)
    await _call(server, "POST", f"/_matrix/client/v3/join/{_q(room_id)}", {}, member.access_token)
    state = f"/_matrix/client/v3/rooms/{_q(room_id)}/state"
    # Even the bot's own token cannot hand out the power to invite, nor open the room:
    # that is what a thief holding it would do first.
    levels_path = f"{state}/m.room.power_levels/"
    levels = await _call(server, "GET", levels_path, None, token)
    raised = {**levels, "users": {**levels.get("users", {}), member.user_id: 100}}
    error = await _refused(server, "PUT", levels_path, raised, token)
    assert f"{member.user_id} would hold power only the bot may hold" in error
    error = await _refused(
        server, "PUT", f"{state}/m.room.join_rules/", {"join_rule": "public"}, token
    )
    assert "join_rule must stay 'invite', not 'public'" in error
    error = await _refused(
        server,
        "PUT",
        f"{state}/m.room.tombstone/",
        {"body": "moved", "replacement_room": "!x:y"},
        member.access_token,
    )
    assert f"only {bot_env.bot_user.user_id} may change m.room.tombstone" in error
    # A member changes neither the label nor who may join or read (the gate answers
    # before the room's own power levels are even consulted).
    error = await _refused(
        server, "PUT", f"{state}/{LABEL_EVENT}/", {"level": "UNCLASSIFIED"}, member.access_token
    )
    assert f"only a liaison bot may set {LABEL_EVENT}" in error
    for event_type, content in (
        ("m.room.join_rules", {"join_rule": "public"}),
        ("m.room.history_visibility", {"history_visibility": "world_readable"}),
        ("m.room.guest_access", {"guest_access": "can_join"}),
        ("m.room.power_levels", raised),
        ("m.room.server_acl", {"allow": ["*"]}),
    ):
        error = await _refused(
            server, "PUT", f"{state}/{event_type}/", content, member.access_token
        )
        assert f"only {bot_env.bot_user.user_id} may change {event_type}" in error


async def test_nobody_but_a_bot_can_make_a_room_look_managed(
    make_user: MakeUser, synapse: DevServer
) -> None:
    mallory = make_user("mallory")
    error = await _refused(
        synapse,
        "POST",
        "/_matrix/client/v3/createRoom",
        {
            "preset": "private_chat",
            "initial_state": [
                {"type": LABEL_EVENT, "state_key": "", "content": {"level": "NATO SECRET"}}
            ],
        },
        mallory.access_token,
    )
    assert f"only a liaison bot may set {LABEL_EVENT}" in error


@pytest.fixture
def ghost(make_user: MakeUser, synapse: DevServer) -> Iterator[RegisteredUser]:
    """A bot whose register the gate cannot reach (nothing listens on port 1), on the
    session's homeserver for this test only: its entry is removed again when the test ends,
    passed or failed (left there, every later test would run with a register that is never
    readable, and any room of an unknown bot would be refused as perhaps its)."""
    ghost = make_user("ghostbot")
    synapse.add_register(
        {"bot_user_id": ghost.user_id, "database": "postgresql+psycopg://gate@127.0.0.1:1/liaison"},
        data_key="ghost-data-key-0123456789abcdef",
    )
    yield ghost
    synapse.remove_register(ghost.user_id)


async def test_an_unreachable_register_closes_managed_rooms_only(
    ghost: RegisteredUser, make_user: MakeUser, synapse: DevServer
) -> None:
    created = await _call(
        synapse,
        "POST",
        "/_matrix/client/v3/createRoom",
        {
            "preset": "private_chat",
            "initial_state": [{"type": LABEL_EVENT, "state_key": "", "content": NATO_SECRET_LABEL}],
        },
        ghost.access_token,
    )
    managed = created["room_id"]
    guest = make_user("guest")
    error = await _refused(
        synapse,
        "POST",
        f"/_matrix/client/v3/rooms/{_q(managed)}/invite",
        {"user_id": guest.user_id},
        ghost.access_token,
    )
    assert f"the clearance register of {ghost.user_id} cannot be read" in error
    error = await _refused(
        synapse, "POST", f"/_matrix/client/v3/join/{_q(managed)}", {}, guest.access_token
    )
    assert "cannot be read" in error
    # The same users, a room that is not managed: nothing changes.
    plain = await _call(
        synapse,
        "POST",
        "/_matrix/client/v3/createRoom",
        {"preset": "private_chat"},
        ghost.access_token,
    )
    await _invite(synapse, ghost.access_token, plain["room_id"], guest.user_id)
    await _call(
        synapse, "POST", f"/_matrix/client/v3/join/{_q(plain['room_id'])}", {}, guest.access_token
    )
    assert await _membership(synapse, ghost.access_token, plain["room_id"], guest.user_id) == "join"


async def test_a_stolen_bot_token_cannot_loosen_power_levels_or_protected_state(
    bot_env: BotEnv,
) -> None:
    """Issue 24 item 3: power levels without `invite` (the spec reads 0), an `events` map
    that hands members join rules, power levels or the ACL, an ACL that allows `*`, and
    encryption, tombstone and label changes are all refused by the server, even from the
    bot's own account."""
    server = bot_env.server
    room_id = bot_env.room_id("deu")
    token = await _stolen_login(server, bot_env.bot_user)
    state = f"/_matrix/client/v3/rooms/{_q(room_id)}/state"
    levels_path = f"{state}/m.room.power_levels/"
    levels = await _call(server, "GET", levels_path, None, token)
    no_invite = {k: v for k, v in levels.items() if k != "invite"}
    error = await _refused(server, "PUT", levels_path, no_invite, token)
    assert "users_default 0 reaches the power to act on others" in error
    assert "invite 0 (absent: the spec's default)" in error
    for event_type in ("m.room.join_rules", "m.room.power_levels", "m.room.server_acl"):
        handed = {**levels, "events": {**levels.get("events", {}), event_type: 0}}
        error = await _refused(server, "PUT", levels_path, handed, token)
        assert f"users_default (0) would reach the level to change {event_type} (0)" in error
    error = await _refused(
        server,
        "PUT",
        f"{state}/m.room.server_acl/",
        {"allow": ["*"], "deny": [], "allow_ip_literals": False},
        token,
    )
    assert "ACL entry '*' is a pattern: only named servers are allowed" in error
    error = await _refused(
        server, "PUT", f"{state}/m.room.server_acl/", {"allow": [server.server_name]}, token
    )
    assert "allow_ip_literals must be false" in error
    error = await _refused(server, "PUT", f"{state}/m.room.encryption/", {}, token)
    assert "algorithm must stay 'm.megolm.v1.aes-sha2'" in error
    error = await _refused(
        server,
        "PUT",
        f"{state}/m.room.tombstone/",
        {"body": "moved", "replacement_room": "!elsewhere:localhost"},
        token,
    )
    assert "a managed room is never replaced" in error
    label = await _call(server, "GET", f"{state}/{LABEL_EVENT}/", None, token)
    error = await _refused(
        server, "PUT", f"{state}/{LABEL_EVENT}/", {**label, "rank": label["rank"] - 1}, token
    )
    assert f"rank {label['rank'] - 1} does not agree with banner" in error
    # nothing of it reached the room
    assert await _call(server, "GET", levels_path, None, token) == levels
