"""Exactly once across a crash: the bot process dies after writing the ledger (or after the
send, before recording it); after a restart the target room holds exactly one copy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.devtools.devserver import DevServer
from bot.storage import IntelItemRow, Store
from tests.bot_harness import nothing_arrives, process_scenario, relayed_barrier, text_with
from tests.matrix_harness import MakeClient, MakeUser
from tests.pg import fresh_schema

# Loaded into the bot process only: it kills it at the point the test names.
CRASHPOINTS = str(Path(__file__).resolve().parent / "crashpoints")


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
        async with process_scenario(
            tmp_path,
            synapse,
            make_user,
            make_client,
            url,
            LIAISON_TEST_CRASH_AT=crash_point,
            PYTHONPATH=os.pathsep.join(filter(None, [CRASHPOINTS, os.environ.get("PYTHONPATH")])),
        ) as s:
            phrase = f"crash-{crash_point}-{secrets.token_hex(4)}"
            mark = s.member.event_count(s.nato_s)
            await s.officer.send_text(s.deu, f"[GEHEIM // REL TO NATO] {phrase}")
            assert await asyncio.to_thread(s.proc.wait, 60) == 70  # tests/crashpoints
            assert [r.target_key for r in s.store.pending_relays()] == ["nato-s"]
            s.start()  # no crash point now
            await s.wait_for_log("reusing device")
            await s.member.wait_for_text(s.nato_s, phrase, timeout=60)
            await s.officer.wait_for_text(s.deu, "Relayed to nato-s", timeout=30)
            await nothing_arrives(
                s.member,
                s.nato_s,
                text_with(phrase),
                since=mark,
                already=1,
                barrier=relayed_barrier(s.officer, s.deu, "GEHEIM // REL TO NATO"),
                what="the copy",
            )
            assert s.store.pending_relays() == []
            assert len(s.store.copies_of(_item_id(s.store, s.deu))) == 1


def _item_id(store: Store, room_id: str) -> str:
    with store.session() as session:
        event_id = session.scalar(
            select(IntelItemRow.event_id).where(IntelItemRow.room_id == room_id)
        )
    assert event_id is not None
    return str(event_id)
