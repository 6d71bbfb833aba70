"""Exactly once across a crash: the bot process dies after writing the ledger (or after the
send, before recording it); after a restart the target room holds exactly one copy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
from pathlib import Path

import pytest

from bot.config import load_config
from bot.devserver import DevServer
from bot.migrate import upgrade
from bot.register import ClearanceRegister
from bot.relay import CRASH_ENV
from bot.store import Store
from tests.bot_harness import ROOMS, open_dm, talk, write_config
from tests.matrix_harness import MakeClient, MakeUser
from tests.pg import fresh_schema
from tests.test_run_cli import SCRIPT, wait_for_line


def start(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [SCRIPT, "run", "--config", str(config)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
@pytest.mark.parametrize("crash_point", ["after-ledger", "after-send"])
async def test_crash_and_restart_relay_exactly_once(
    crash_point: str,
    database: str,
    tmp_path: Path,
    synapse: DevServer,
    make_user: MakeUser,
    make_client: MakeClient,
) -> None:
    with contextlib.ExitStack() as stack:
        url = "sqlite:///bot.db"
        if database == "postgresql":
            url = stack.enter_context(fresh_schema())
        await _crash_and_restart(crash_point, url, tmp_path, synapse, make_user, make_client)


async def _crash_and_restart(
    crash_point: str,
    database_url: str,
    tmp_path: Path,
    synapse: DevServer,
    make_user: MakeUser,
    make_client: MakeClient,
) -> None:
    bot_user, admin, officer, member = (make_user(p) for p in ("liaison", "admin", "lo", "nor"))
    config_path = tmp_path / "config.toml"
    write_config(
        config_path,
        synapse,
        bot_user,
        admin.user_id,
        officer.user_id,
        ROOMS,
        database_url=database_url,
    )
    config = load_config(config_path)
    await asyncio.to_thread(upgrade, config.database_url())
    store = Store.from_url(config.database_url())
    register = ClearanceRegister(store)
    register.grant("cli:test", officer.user_id, "DEU GEHEIM", nationality="DEU")
    register.grant("cli:test", officer.user_id, "NATO SECRET")
    register.grant("cli:test", member.user_id, "NATO SECRET", nationality="NOR")
    env = {
        **os.environ,
        "LIAISON_TEST_PASSWORD": bot_user.password,
        "LIAISON_TEST_PICKLE_KEY": "pickle",
        "LIAISON_TEST_DATA_KEY": "data",
    }
    log = tmp_path / "bot.log"
    proc = start(config_path, {**env, CRASH_ENV: crash_point}, log)
    try:
        await asyncio.to_thread(wait_for_line, log, "first sync after", proc)
        deu, nato_s = store.room("deu").room_id, store.room("nato-s").room_id  # type: ignore[union-attr]
        admin_client = await make_client(admin)
        dm = await open_dm(admin_client, bot_user.user_id)
        officer_client, member_client = await make_client(officer), await make_client(member)
        await talk(admin_client, dm, f"!invite {officer.user_id} deu", "Invited")
        await talk(admin_client, dm, f"!invite {member.user_id} nato-s", "Invited")
        await officer_client.join(await officer_client.wait_for_invite())
        await member_client.join(await member_client.wait_for_invite())
        phrase = f"crash-{crash_point}-{secrets.token_hex(4)}"
        await officer_client.send_text(deu, f"[GEHEIM // REL TO NATO] {phrase}")
        assert await asyncio.to_thread(proc.wait, 60) == 70  # the test crash point
        pending = store.pending_relays()
        assert [r.target_key for r in pending] == ["nato-s"]
        proc = start(config_path, env, log)  # no crash point now
        await asyncio.to_thread(wait_for_line, log, "reusing device", proc)
        await member_client.wait_for_text(nato_s, phrase, timeout=60)
        await officer_client.wait_for_text(deu, "Relayed to nato-s", timeout=30)
        await asyncio.sleep(3)  # room for a duplicate to show up, if there were one
        copies = [t for t in member_client.texts(nato_s) if phrase in t]
        assert len(copies) == 1, member_client.summary(nato_s)
        assert store.pending_relays() == []
        assert len(store.copies_of(_item_id(store, deu))) == 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 30)
        store.close()


def _item_id(store: Store, room_id: str) -> str:
    from sqlalchemy import select

    from bot.store import IntelItemRow

    with store.session() as session:
        event_id = session.scalar(
            select(IntelItemRow.event_id).where(IntelItemRow.room_id == room_id)
        )
    assert event_id is not None
    return str(event_id)
