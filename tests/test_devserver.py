"""The throwaway homeserver and the E2EE test clients, against a real Synapse.

Everything else in the integration suite stands on these, so they are checked first and on
their own: if one of these fails, a failing bot test says nothing about the bot.
"""

from __future__ import annotations

import socket
import urllib.parse
from pathlib import Path

import pytest
from nio import MegolmEvent, RoomMemberEvent, RoomMessageText

from bot.devtools.devserver import DevServer, DevServerError
from tests.matrix_harness import MakeClient, MakeUser

# The E2EE clients live in the session loop, like the fixtures that make them.
session_loop = pytest.mark.asyncio(loop_scope="session")


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def test_server_answers_and_registers_users(synapse: DevServer, make_user: MakeUser) -> None:
    assert synapse.is_running()
    assert synapse.base_url.startswith("http://127.0.0.1:")
    versions = synapse.request("GET", "/_matrix/client/versions")
    assert "v1.11" in versions["versions"], versions  # the spec version nio 0.26 speaks

    admin = make_user("admin", admin=True)
    plain = make_user("Plain")
    assert admin.user_id.endswith(":localhost") and plain.user_id.startswith("@plain-")
    whoami = synapse.request("GET", "/_matrix/client/v3/account/whoami", token=plain.access_token)
    assert whoami["user_id"] == plain.user_id and whoami["device_id"] == plain.device_id

    info = synapse.request(
        "GET", f"/_synapse/admin/v2/users/{_quote(plain.user_id)}", token=admin.access_token
    )
    assert info["admin"] is False
    with pytest.raises(DevServerError, match=r"HTTP 403 M_FORBIDDEN"):
        synapse.request(
            "GET", f"/_synapse/admin/v2/users/{_quote(admin.user_id)}", token=plain.access_token
        )


def test_register_with_logout_leaves_no_device(synapse: DevServer, make_user: MakeUser) -> None:
    admin = make_user("admin", admin=True)
    user = make_user("nodevice", logout=True)
    devices = synapse.request(
        "GET", f"/_synapse/admin/v2/users/{_quote(user.user_id)}/devices", token=admin.access_token
    )
    assert devices["total"] == 0
    with pytest.raises(DevServerError, match=r"HTTP 401 M_UNKNOWN_TOKEN"):
        synapse.request("GET", "/_matrix/client/v3/account/whoami", token=user.access_token)


@session_loop
async def test_encrypted_message_reaches_the_other_client(
    make_user: MakeUser, make_client: MakeClient
) -> None:
    alice = await make_client(make_user("alice"))
    bob = await make_client(make_user("bob"))

    room_id = await alice.create_room(name="liaison", invite=[bob.user_id])
    assert alice.client.rooms[room_id].encrypted
    # Sent while Bob is only invited: his device still gets the room key.
    await alice.send_text(room_id, "before you join")
    assert await bob.wait_for_invite(inviter=alice.user_id) == room_id
    await bob.join(room_id)
    assert room_id in await bob.joined_rooms()

    await alice.send_text(room_id, "hello from alice")
    received = await bob.wait_for_text(room_id, "hello from alice")
    assert isinstance(received, RoomMessageText)
    assert received.sender == alice.user_id and received.decrypted
    assert bob.texts(room_id) == ["before you join", "hello from alice"]

    # And back, which needs Alice to learn Bob's new device keys.
    mark = alice.event_count(room_id)
    await bob.send_text(room_id, "hello from bob", formatted_body="<b>hello</b> from bob")
    reply = await alice.wait_for_text(room_id, "hello from bob", after=mark)
    assert reply.formatted_body == "<b>hello</b> from bob"
    assert bob.undecryptable(room_id) == [] and alice.undecryptable(room_id) == []
    assert not any(isinstance(e, MegolmEvent) for e in bob.events[room_id])


@session_loop
async def test_kick_and_reinvite_are_seen(make_user: MakeUser, make_client: MakeClient) -> None:
    alice = await make_client(make_user("alice"))
    bob = await make_client(make_user("bob"), auto_join=True)
    room_id = await alice.create_dm(bob.user_id)
    await bob.wait_for_room(room_id)
    assert await bob.wait_for_invite() == room_id

    await alice.kick(room_id, bob.user_id, reason="cleared")
    kick = await bob.wait_for(
        room_id,
        lambda e: (
            isinstance(e, RoomMemberEvent)
            and e.state_key == bob.user_id
            and e.membership == "leave"
        ),
    )
    assert kick.sender == alice.user_id
    assert room_id in bob.client.rooms  # nio keeps it ...
    assert room_id not in await bob.joined_rooms()  # ... the server does not

    await alice.invite(room_id, bob.user_id)
    assert await bob.wait_for_invite() == room_id  # a re-invite counts again
    mark = bob.event_count(room_id)
    await alice.send_text(room_id, "welcome back")
    await bob.wait_for_text(room_id, "welcome back", after=mark)


@session_loop
async def test_wait_for_reports_what_was_seen(make_user: MakeUser, make_client: MakeClient) -> None:
    carol = await make_client(make_user("carol"))
    room_id = await carol.create_room(name="quiet")
    await carol.send_text(room_id, "only this")
    await carol.wait_for_text(room_id, "only this")
    with pytest.raises(AssertionError, match=r"(?s)never said.*'only this'"):
        await carol.wait_for_text(room_id, "never said", timeout=0.5)


@session_loop
async def test_make_room_admin(
    synapse: DevServer, make_user: MakeUser, make_client: MakeClient
) -> None:
    admin = make_user("admin", admin=True)
    alice = await make_client(make_user("alice"))
    bob = await make_client(make_user("bob"), auto_join=True)

    room_id = await alice.create_room(invite=[bob.user_id])
    await bob.wait_for_room(room_id)  # auto-joined

    with pytest.raises(DevServerError, match="M_FORBIDDEN"):
        synapse.make_room_admin(bob.user.access_token, room_id, bob.user_id)
    synapse.make_room_admin(admin.access_token, room_id, bob.user_id)

    levels = synapse.request(
        "GET",
        f"/_matrix/client/v3/rooms/{_quote(room_id)}/state/m.room.power_levels",
        token=bob.user.access_token,
    )
    assert levels["users"][bob.user_id] == 100


def test_restart_keeps_users_and_port(tmp_path: Path) -> None:
    server = DevServer(tmp_path / "hs")
    server.start()
    try:
        user = server.register("survivor", "secret-pw")
        port = server.port
        server.stop()
        assert not server.is_running()
        server.stop()  # idempotent
        with pytest.raises(DevServerError):
            server.request("GET", "/_matrix/client/versions", timeout=2)

        server.start()
        assert server.port == port
        login = server.request(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "survivor"},
                "password": "secret-pw",
            },
        )
        assert login["user_id"] == user.user_id
        whoami = server.request("GET", "/_matrix/client/v3/account/whoami", token=user.access_token)
        assert whoami["user_id"] == user.user_id
    finally:
        server.stop()


def test_failed_start_shows_the_log(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = DevServer(tmp_path / "hs", port=blocker.getsockname()[1])
        with pytest.raises(DevServerError, match=r"(?s)exited.*homeserver.log"):
            server.start(timeout=30)
    assert not server.is_running()
