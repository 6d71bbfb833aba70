"""Crash safety inside nio (issue 24, items 12-14), against the real Synapse:

- 12: the bot process dies after its one-time keys were uploaded and before nio saved the
  account: after a restart a fresh device still claims a key the bot holds (its message is
  read) and the bot's uploads do not fail;
- 13: the process dies while a pre-key message is handled, after the account and the Olm
  session were written and before the room key: the room key is not lost;
- 14: an exception inside nio's processing of a sync that carries a room key: the key is
  still received (the message is read), since the client is reloaded from its store and
  syncs again from the stored token.

Items 12 and 13 run with each crypto store: the folder (SQLite) and the PostgreSQL database
(`crypto_store = "database"`, bot/matrix/dbstore.py), whose transactions must hold the same.

The process crashes come from a `sitecustomize` written into the test's own folder and put on
the bot process's PYTHONPATH (as tests/crashpoints does): the bot's code holds no hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.config import load_config
from bot.devtools.devserver import DevServer
from bot.storage import Store, audit_key_from
from bot.storage.migrate import upgrade
from tests.bot_harness import (
    ROOMS,
    BotEnv,
    ProcessScenario,
    open_dm,
    process_scenario,
    talk,
    write_config,
)
from tests.matrix_harness import MakeClient, MakeUser
from tests.pg import fresh_schema

CRASH_EXIT = 70

# Loaded into the bot process only (Python imports `sitecustomize` at start-up). It kills the
# process at the point LIAISON_TEST_NIO_CRASH_AT names, once the file named by
# LIAISON_TEST_NIO_CRASH_ARMED exists (at once when that variable is unset).
HOOKS = textwrap.dedent(
    """
    import os

    from nio.crypto import Olm
    from nio.responses import KeysUploadResponse

    _point = os.environ.get("LIAISON_TEST_NIO_CRASH_AT")
    _armed = os.environ.get("LIAISON_TEST_NIO_CRASH_ARMED")


    def _armed_now():
        return not _armed or os.path.exists(_armed)


    if _point == "after-keys-upload":
        # The homeserver took the keys; nio has not yet marked them published and saved.
        _handle_response = Olm.handle_response

        def handle_response(self, response):
            if isinstance(response, KeysUploadResponse) and _armed_now():
                os._exit(70)
            return _handle_response(self, response)

        Olm.handle_response = handle_response
    elif _point == "before-room-key":
        # A pre-key message: the account (one-time key used) and the Olm session are
        # written, the room key it carries not yet.
        _room_key = Olm._handle_room_key_event

        def _handle_room_key_event(self, *args, **kwargs):
            if _armed_now():
                os._exit(70)
            return _room_key(self, *args, **kwargs)

        Olm._handle_room_key_event = _handle_room_key_event
    elif _point:
        raise SystemExit(f"LIAISON_TEST_NIO_CRASH_AT: unknown crash point {_point!r}")
    """
)


def _hooks(tmp_path: Path, point: str, armed: Path | None = None) -> dict[str, str]:
    folder = tmp_path / "hooks"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOOKS)
    env = {
        "LIAISON_TEST_NIO_CRASH_AT": point,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])),
    }
    if armed is not None:
        env["LIAISON_TEST_NIO_CRASH_ARMED"] = str(armed)
    return env


@contextlib.contextmanager
def _storage(crypto_store: str) -> Iterator[tuple[str, str]]:
    """(database_url, crypto_store) for the config: SQLite and the folder store, or a fresh
    PostgreSQL schema holding the crypto store too (skipped without a server)."""
    if crypto_store == "folder":
        yield "sqlite:///bot.db", "crypto"
        return
    with fresh_schema() as url:
        yield url, "database"


STORES = pytest.mark.parametrize("crypto_store", ["folder", "database"])


@STORES
async def test_a_crash_after_the_key_upload_loses_no_one_time_key(
    tmp_path: Path,
    synapse: DevServer,
    make_user: MakeUser,
    make_client: MakeClient,
    crypto_store: str,
) -> None:
    """The first start dies the moment the homeserver has taken the bot's one-time keys.
    Before the fix nio had not saved them: the restarted account made other keys under the
    same ids, every upload failed ("already exists"), and a device that claimed one of the
    keys on the server could not open an Olm session with the bot."""
    with _storage(crypto_store) as (database_url, store_setting):
        bot_user, admin = make_user("liaison"), make_user("admin")
        config_path = tmp_path / "config.toml"
        data_key = "process-data-key-0123456789abcdef"
        write_config(
            config_path,
            synapse,
            bot_user,
            admin.user_id,
            admin.user_id,
            ROOMS,
            data_key=data_key,
            database_url=database_url,
            crypto_store=store_setting,
        )
        config = load_config(config_path)
        await asyncio.to_thread(upgrade, config.database_url())
        store = Store.from_url(config.database_url(), audit_key_from(data_key))
        env = {
            **os.environ,
            "LIAISON_TEST_PASSWORD": bot_user.password,
            "LIAISON_TEST_PICKLE_KEY": "process-pickle-key-0123456789abcdef",
            "LIAISON_TEST_DATA_KEY": data_key,
        }
        bot = ProcessScenario(config_path, env, tmp_path / "bot.log", store)
        try:
            bot.start(**_hooks(tmp_path, "after-keys-upload"))
            assert await asyncio.to_thread(bot.proc.wait, 60) == CRASH_EXIT, bot.log.read_text()
            assert store.bot_session() is not None  # the device is kept: the restart reuses it
            bot.start()
            await bot.wait_for_log("first sync after")
            # A device that has never talked to the bot claims one of its one-time keys.
            person = await make_client(admin)
            dm = await open_dm(person, bot_user.user_id)
            await talk(person, dm, "!whoami", "Roles: admin", timeout=45)
            log = bot.log.read_text(errors="replace")
            assert "one-time keys not uploaded" not in log, log[-3000:]
        finally:
            await bot.stop()
            store.close()


@STORES
async def test_a_crash_inside_a_pre_key_message_loses_no_room_key(
    tmp_path: Path,
    synapse: DevServer,
    make_user: MakeUser,
    make_client: MakeClient,
    crypto_store: str,
) -> None:
    """The officer's first message into `deu` brings the bot a new Olm session and a room
    key in one pre-key message; the bot process dies between writing the session and the
    room key. Before the fix the account (its one-time key gone) and the session were
    already committed: the message that is delivered again after the restart no longer
    decrypts, and the room key is lost. Now nothing of it is committed, and it is read."""
    armed = tmp_path / "armed"
    with _storage(crypto_store) as (database_url, store_setting):
        async with process_scenario(
            tmp_path,
            synapse,
            make_user,
            make_client,
            database_url,
            store_setting,
            **_hooks(tmp_path, "before-room-key", armed),
        ) as s:
            armed.touch()  # set-up done: the next room key kills the process
            phrase = f"room-key-{secrets.token_hex(4)}"
            await s.officer.send_text(s.deu, f"[GEHEIM // REL TO NATO] {phrase}")
            assert await asyncio.to_thread(s.proc.wait, 60) == CRASH_EXIT, s.log.read_text()
            armed.unlink()
            s.start()  # no crash point now
            await s.wait_for_log("reusing device")
            await s.member.wait_for_text(s.nato_s, phrase, timeout=60)


async def test_an_exception_inside_nio_loses_no_room_key(
    bot_env: BotEnv, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """nio's processing of a sync fails once, in the middle of the room key a new device of
    the admin sends with its first message. Before the fix nio had already taken the sync's
    token: the retry of the same sync did nothing, and the key (Olm session half committed)
    was lost. Now the client is reloaded from its store and syncs again from the stored
    token: the message is read and answered."""
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    await talk(admin, dm, "!whoami", "Roles: admin")
    assert bot_env.bot is not None
    olm = bot_env.bot.gateway.client.olm
    assert olm is not None
    create = olm.create_group_session
    failed: list[str] = []

    def fail_once(*args: Any, **kwargs: Any) -> None:
        if not failed:
            failed.append("once")
            raise RuntimeError("injected failure inside nio")
        create(*args, **kwargs)

    olm.create_group_session = fail_once
    caplog.set_level(logging.INFO)
    fresh = await make_client(bot_env.admin)  # a new device: a new Olm session and room key
    await fresh.wait_for_room(dm)
    await talk(fresh, dm, "!whoami", "Roles: admin", timeout=45)
    assert failed
    assert "reloading the client from its store" in caplog.text
