"""A restart with stored rooms (issue: fast restart): rooms taken as stored and checked after
the first sync, room state restored from sealed snapshots and synced on from the token, and
a snapshot the database's holder altered ignored (a full sync instead). Real Synapse."""

from __future__ import annotations

import logging
import stat
import urllib.parse
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from bot.matrix.gateway import Gateway, MatrixError
from bot.matrix.sync import MANIFEST, seal_manifest
from bot.storage import RoomSnapshotRow
from bot.storage.sealing import Sealer
from tests.bot_harness import SECRETS, BotEnv, enrol, eventually, open_dm, talk
from tests.matrix_harness import MakeClient, MakeUser


@pytest.fixture
def bot_env(own_bot_env: BotEnv) -> BotEnv:
    """Every test here stops the bot and changes what its next start reads (the room's
    state, its snapshots, its crypto store): each has a bot of its own, so that none starts
    on what another left."""
    return own_bot_env


def _topic(bot_env: BotEnv, room_id: str) -> str:
    assert bot_env.bot is not None
    quoted = urllib.parse.quote(room_id)
    state = bot_env.server.request(
        "GET",
        f"/_matrix/client/v3/rooms/{quoted}/state/m.room.topic/",
        token=bot_env.bot.client.access_token,
    )
    return str(state["topic"])


async def test_a_restart_takes_stored_rooms_at_once_and_puts_drift_back(
    bot_env: BotEnv, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    assert bot_env.bot is not None
    nato_s = bot_env.room_id("nato-s")
    token = bot_env.bot.client.access_token
    want = _topic(bot_env, nato_s)
    mark = admin.event_count(dm)
    await bot_env.stop()
    # Only the bot may change it: someone holding its token does, while it is down.
    bot_env.server.request(
        "PUT",
        f"/_matrix/client/v3/rooms/{urllib.parse.quote(nato_s)}/state/m.room.topic/",
        {"topic": "tampered"},
        token=token,
    )
    caplog.set_level(logging.INFO)
    await bot_env.start()
    assert "rooms provisioned: 2/2 (as stored; state checked after the first sync)" in caplog.text
    await eventually(lambda: _topic(bot_env, nato_s) == want, what="topic put back")
    # The check logs once the room is done (after its flags are recorded), which may be a
    # moment after the server shows the topic put back.
    await eventually(lambda: "had drifted; put back: m.room.topic" in caplog.text, what="log")
    alert = await admin.wait_for_text(dm, "Managed rooms not as the bot left them", after=mark)
    assert "nato-s: had been changed; put back: m.room.topic" in alert.body


async def test_a_restart_restores_rooms_and_syncs_on_from_the_token(
    bot_env: BotEnv,
    make_client: MakeClient,
    make_user: MakeUser,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What changed while the bot was down (a member left) is applied on top of the stored
    snapshot; the snapshots in the database are sealed (no member list in clear)."""
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    stays, leaves = make_user("stays"), make_user("leaves")
    stays_client, leaves_client = await make_client(stays), await make_client(leaves)
    grants = [(u.user_id, "NATO SECRET", "NOR") for u in (stays, leaves)]
    (nato_s, _) = await enrol(
        (admin, dm), grants, [(stays_client, "nato-s"), (leaves_client, "nato-s")]
    )
    assert bot_env.bot is not None
    running = bot_env.bot
    await eventually(
        lambda: {stays.user_id, leaves.user_id} <= set(running.gateway.members(nato_s) or {}),
        what="both members seen",
    )
    await talk(admin, dm, "!whoami", "Roles: admin")  # a sync after the joins is stored
    store = bot_env.bot.store
    with store.session() as session:
        sealed = session.scalars(select(RoomSnapshotRow.sealed)).all()
    assert sealed and not any("@" in s or "stays" in s for s in sealed)
    await bot_env.stop()
    await leaves_client.client.room_leave(nato_s)
    caplog.set_level(logging.INFO)
    await bot_env.start()
    assert "room(s) restored from their snapshots" in caplog.text
    members = bot_env.bot.gateway.members(nato_s)
    assert members is not None
    assert stays.user_id in members and leaves.user_id not in members
    assert bot_env.bot.gateway.is_encrypted(nato_s) is True
    await talk(admin, dm, "!whoami", "Roles: admin")


async def test_an_altered_snapshot_is_ignored_and_the_restart_syncs_in_full(
    bot_env: BotEnv,
    make_client: MakeClient,
    make_user: MakeUser,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Someone with write access to the database swaps two rooms' snapshots (each sealed
    for its own room): neither opens, the bot syncs every room in full and works."""
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    assert bot_env.bot is not None
    deu, nato_s = bot_env.room_id("deu"), bot_env.room_id("nato-s")
    # A member in nato-s only, so that the two rooms' member lists differ.
    member = make_user("member")
    member_client = await make_client(member)
    await enrol((admin, dm), [(member.user_id, "NATO SECRET", "NOR")], [(member_client, "nato-s")])
    bot = bot_env.bot
    await eventually(lambda: member.user_id in (bot.gateway.members(nato_s) or {}), what="joined")
    await talk(admin, dm, "!whoami", "Roles: admin")  # a sync after the join is stored
    nato_members = bot_env.bot.gateway.members(nato_s)
    url = bot_env.config.database_url()
    await bot_env.stop()
    from bot.storage import Store

    store = Store.from_url(url)
    try:
        snapshots = store.room_snapshots()
        with store.session() as session:
            session.execute(
                update(RoomSnapshotRow)
                .where(RoomSnapshotRow.room_id == deu)
                .values(sealed=snapshots[nato_s])
            )
    finally:
        store.close()
    caplog.set_level(logging.INFO)
    await bot_env.start()
    assert "room snapshots do not open" in caplog.text
    assert "restored from their snapshots" not in caplog.text
    assert bot_env.bot.gateway.members(nato_s) == nato_members
    assert bot_env.bot.gateway.members(deu) != nato_members
    await talk(admin, dm, "!whoami", "Roles: admin")


async def test_an_old_snapshot_copied_back_does_not_open(
    bot_env: BotEnv,
    make_client: MakeClient,
    make_user: MakeUser,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database writer keeps a room's sealed snapshot from when someone was still in it
    and puts it back after they left, under the newer sync token. It is that room's, but it
    was sealed with the token it was stored with, not this one: it does not open, and the
    restart syncs every room in full (the one who left is not a member)."""
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    gone = make_user("gone")
    gone_client = await make_client(gone)
    (nato_s,) = await enrol(
        (admin, dm), [(gone.user_id, "NATO SECRET", "NOR")], [(gone_client, "nato-s")]
    )
    assert bot_env.bot is not None
    bot = bot_env.bot
    await eventually(lambda: gone.user_id in (bot.gateway.members(nato_s) or {}), what="joined")
    await talk(admin, dm, "!whoami", "Roles: admin")  # a sync after the join is stored
    old = bot.store.room_snapshots()[nato_s]
    await gone_client.client.room_leave(nato_s)
    await eventually(lambda: gone.user_id not in (bot.gateway.members(nato_s) or {}), what="left")
    await talk(admin, dm, "!whoami", "Roles: admin")
    assert bot.store.room_snapshots()[nato_s] != old
    url = bot_env.config.database_url()
    await bot_env.stop()
    from bot.storage import Store

    store = Store.from_url(url)
    try:
        with store.session() as session:
            session.execute(
                update(RoomSnapshotRow).where(RoomSnapshotRow.room_id == nato_s).values(sealed=old)
            )
    finally:
        store.close()
    caplog.set_level(logging.INFO)
    await bot_env.start()
    assert "room snapshots do not open" in caplog.text
    assert "restored from their snapshots" not in caplog.text
    restarted = bot_env.bot
    assert restarted is not None
    assert gone.user_id not in (restarted.gateway.members(nato_s) or {})
    await talk(admin, dm, "!whoami", "Roles: admin")


async def test_a_member_list_the_server_never_confirmed_gets_no_room_key(
    bot_env: BotEnv,
    make_client: MakeClient,
    make_user: MakeUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a restart from snapshots, `/joined_members` loses the race with a sync every
    time it is asked (a sync that changed the room's members is handled while the answer
    travels): the restored list is never confirmed, so no room key is shared with it; once
    an answer holds, the room key goes out and the member reads."""
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    member = make_user("member")
    member_client = await make_client(member)
    (nato_s,) = await enrol(
        (admin, dm), [(member.user_id, "NATO SECRET", "NOR")], [(member_client, "nato-s")]
    )
    assert bot_env.bot is not None
    bot = bot_env.bot
    await eventually(lambda: member.user_id in (bot.gateway.members(nato_s) or {}), what="joined")
    await talk(admin, dm, "!whoami", "Roles: admin")  # a sync after the join is stored
    await bot_env.stop()
    asked = Gateway._joined_member_ids
    phantoms: list[str] = []

    async def losing_the_race(self: Gateway, room_id: str) -> dict[str, dict[str, Any]]:
        joined = await asked(self, room_id)
        room = self.client.rooms.get(room_id)
        if room_id == nato_s and room is not None:
            # What a sync handled meanwhile would do: a new token, a change to the members.
            self.client.next_batch = f"{self.client.next_batch}+"
            phantoms.append(f"@phantom-{len(phantoms)}:example.invalid")
            room.add_member(phantoms[-1], None, None, invited=True)
        return joined

    monkeypatch.setattr(Gateway, "_joined_member_ids", losing_the_race)
    await bot_env.start()
    restarted = bot_env.bot
    assert restarted is not None
    gateway = restarted.gateway
    shared: list[str] = []
    share = gateway._share

    async def noting(room: Any, targets: list[str]) -> None:
        shared.append(room.room_id)
        await share(room, targets)

    monkeypatch.setattr(gateway, "_share", noting)
    with pytest.raises(MatrixError, match="not confirmed"):
        await restarted.messenger.send(nato_s, {"msgtype": "m.notice", "body": "unconfirmed"})
    assert phantoms and nato_s not in shared
    monkeypatch.setattr(Gateway, "_joined_member_ids", asked)
    room = gateway.room(nato_s)
    assert room is not None
    for phantom in phantoms:
        room.remove_member(phantom)
    await restarted.messenger.send(nato_s, {"msgtype": "m.notice", "body": "confirmed"})
    assert nato_s in shared
    await member_client.wait_for_text(nato_s, "confirmed")


async def test_the_crypto_store_is_private(bot_env: BotEnv) -> None:
    """nio makes its database (the Olm account, sessions and room keys, pickled) with the
    umask's mode, 0644 by default. Same rule as the bot's own database: its files 0600, its
    folder 0700, made so and tightened at every start."""
    assert bot_env.bot is not None
    folder = bot_env.config.crypto_store_path()

    def modes() -> dict[str, int]:
        return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.iterdir()]}

    found = modes()
    assert any(name.endswith(".db") for name in found), found
    assert found == {name: 0o700 if name == folder.name else 0o600 for name in found}
    await bot_env.stop()
    for path in [folder, *folder.iterdir()]:
        path.chmod(0o755 if path == folder else 0o644)
    await bot_env.start()
    found = modes()
    assert found == {name: 0o700 if name == folder.name else 0o600 for name in found}


async def test_a_room_without_a_snapshot_is_read_from_the_server(
    bot_env: BotEnv, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A room joined after the stored token (its row is not among those the token lists):
    the restart reads that room's state from the server, restores the others, and writes
    the row again. (A row deleted alone no longer matches the token's list: a full sync.)"""
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    await talk(admin, dm, "!whoami", "Roles: admin")
    assert bot_env.bot is not None
    deu = bot_env.room_id("deu")
    members = bot_env.bot.gateway.members(deu)
    url = bot_env.config.database_url()
    await bot_env.stop()
    from bot.storage import Store

    store = Store.from_url(url)
    try:
        token = store.sync_token()
        assert token is not None
        rows = store.room_snapshots()
        bound = {r: row.partition(" ")[0] for r, row in rows.items() if r not in (deu, MANIFEST)}
        manifest = seal_manifest(Sealer(SECRETS.data_key, "room-snapshot"), token, bound)
        with store.session() as session:
            session.execute(delete(RoomSnapshotRow).where(RoomSnapshotRow.room_id == deu))
            session.execute(
                update(RoomSnapshotRow)
                .where(RoomSnapshotRow.room_id == MANIFEST)
                .values(sealed=manifest)
            )
    finally:
        store.close()
    caplog.set_level(logging.INFO)
    await bot_env.start()
    assert f"room {deu} has no snapshot: its state read from the server" in caplog.text
    assert "room(s) restored from their snapshots" in caplog.text
    assert bot_env.bot is not None
    assert bot_env.bot.gateway.is_encrypted(deu) is True
    assert bot_env.bot.gateway.members(deu) == members
    await talk(admin, dm, "!whoami", "Roles: admin")
    assert deu in bot_env.bot.store.room_snapshots()
