"""The bot's published settings through a real Synapse running the gate: the register entry
the test homeserver's gate reads carries no admins or admin room (as `gate synapse-config`
prints it now), so the admin room is closed to a cleared non-admin only because the running
bot published its settings at start; a forged settings row closes the bot's rooms."""

from __future__ import annotations

import asyncio
import urllib.parse

from sqlalchemy import update

from bot.devtools.botenv import SECRETS, BotEnv
from bot.devtools.devserver import DevServerError
from bot.gate.config import package_version, register_entry
from bot.storage import GateSettingsRow, Store, audit_key_from
from bot.storage.gate_settings import read_gate_settings
from bot.storage.models import SCHEMA_HEAD
from bot.storage.reader import RegisterReader
from bot.storage.store import register_public_key
from policy.ids import UserId
from tests.bot_harness import stopped
from tests.matrix_harness import MakeUser

# The admin room is nato-s: its label admits the NATO SECRET cleared, and the admin-room
# rule then only the bot's admins.
BOT_EXTRA_BOT = 'admin_room = "nato-s"'


def _q(room_id: str) -> str:
    return urllib.parse.quote(room_id, safe="")


async def _invite_error(env: BotEnv, token: str, room_id: str, user_id: str) -> str | None:
    """The refusal of the bot account's invite, None when the server lets it through."""
    try:
        await asyncio.to_thread(
            env.server.request,
            "POST",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/invite",
            {"user_id": user_id},
            token=token,
        )
    except DevServerError as exc:
        return str(exc)
    return None


async def _stolen_login(env: BotEnv) -> str:
    """A new device on the bot's account: the gate, not the bot, must refuse its invites."""
    reply = await asyncio.to_thread(
        env.server.request,
        "POST",
        "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": env.bot_user.user_id},
            "password": env.bot_user.password,
        },
    )
    token: str = reply["access_token"]
    return token


def test_the_entry_the_gate_reads_carries_no_copies(bot_env: BotEnv) -> None:
    entry = register_entry(bot_env.config)
    assert not {"admins", "admin_room", "caveats"} & set(entry), entry


def test_the_running_bot_published_its_settings_signed(bot_env: BotEnv) -> None:
    reader = RegisterReader.from_url(
        bot_env.config.database_url(), register_public_key(SECRETS.data_key)
    )
    try:
        with reader.engine.connect() as conn:
            settings = read_gate_settings(conn, bot_env.bot_user.user_id, reader.verifier)
    finally:
        reader.close()
    assert settings is not None, "published at start"
    assert settings.admins == (bot_env.admin.user_id,)
    assert settings.admin_room == "nato-s"
    assert (settings.bot_version, settings.schema_revision) == (package_version(), SCHEMA_HEAD)


async def test_the_gate_keeps_a_cleared_non_admin_out_of_the_admin_room(
    bot_env: BotEnv, make_user: MakeUser
) -> None:
    bot = bot_env.bot
    assert bot is not None
    room_id = bot_env.room_id("nato-s")
    cleared = make_user("cleared-not-admin")
    await bot.commands.grant(
        UserId(bot_env.admin.user_id),
        UserId(cleared.user_id),
        "NATO SECRET",
        nationality="DEU",
        expires=None,
        caveats=(),
    )
    token = await _stolen_login(bot_env)
    error = await _invite_error(bot_env, token, room_id, cleared.user_id)
    assert error is not None and "HTTP 403" in error, error
    assert f"{cleared.user_id} is not an admin: this is the admin room" in error
    # the same person, cleared, enters a room that is not the admin room
    deu = bot_env.room_id("deu")
    await bot.commands.grant(
        UserId(bot_env.admin.user_id),
        UserId(cleared.user_id),
        "DEU GEHEIM",
        nationality="DEU",
        expires=None,
        caveats=(),
    )
    assert await _invite_error(bot_env, token, deu, cleared.user_id) is None


async def test_a_forged_settings_row_closes_the_rooms_until_the_bot_publishes_again(
    bot_env: BotEnv, make_user: MakeUser
) -> None:
    """Someone with write access to the database adds themselves to the admins: the row no
    longer verifies, so the gate admits nobody to the bot's rooms (deny by default) until
    the bot's next start publishes the row again."""
    bot = bot_env.bot
    assert bot is not None
    mallory = make_user("mallory")
    await bot.commands.grant(
        UserId(bot_env.admin.user_id),
        UserId(mallory.user_id),
        "NATO SECRET",
        nationality="DEU",
        expires=None,
        caveats=(),
    )
    room_id = bot_env.room_id("nato-s")
    token = await _stolen_login(bot_env)
    async with stopped(bot_env):
        store = Store.from_url(bot_env.config.database_url(), audit_key_from(SECRETS.data_key))
        try:
            with store.session() as session:
                session.execute(
                    update(GateSettingsRow)
                    .where(GateSettingsRow.bot_user_id == bot_env.bot_user.user_id)
                    .values(admins=[bot_env.admin.user_id, mallory.user_id])
                )
        finally:
            store.close()
        # A refusal is never given from cached settings: the gate reads the row again at
        # once, and refuses it (the admin, too, would be refused now).
        error = await _invite_error(bot_env, token, room_id, mallory.user_id)
        assert error is not None and "HTTP 403" in error, error
        assert "the gate settings row of" in error and "does not verify" in error, error
    # restarted: published again, the admin room takes admins only again
    error = await _invite_error(bot_env, token, room_id, mallory.user_id)
    assert error is not None, "mallory was let into the admin room"
    assert f"{mallory.user_id} is not an admin: this is the admin room" in error, error
