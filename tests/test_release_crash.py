"""Release approval, exactly once across a crash: the bot runs as its own process, an item
is held for a second officer, the second officer approves it by command, and the bot process
is killed by SIGKILL (tests/crashpoints) just before the approval's transaction, after it
committed, or after the copy was sent but before its ledger row was marked sent.

Before the transaction nothing of the approval is stored: the item is still held and nothing
was relayed when the process dies. The restart then handles the approval command again (the
bot stores its sync position only after handling what it received), so it too ends with one
copy. After the commit the restart re-sends the pending ledger row under the same transaction
id (the homeserver answers a repeat with the copy it already has). Each way the target member
holds exactly one copy, the ledger one sent row, the request is approved by the second
officer; never two copies. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nio import RoomMessageNotice

from bot.config import load_config
from bot.devtools.botenv import rooms_config, write_config
from bot.devtools.devserver import DevServer
from bot.devtools.e2ee_client import E2EEClient, open_dm
from bot.services.register import ClearanceRegister
from bot.storage import HoldState, RelayState, Store, audit_key_from, parse_release_id
from bot.storage.migrate import upgrade
from tests.bot_harness import (
    ProcessScenario,
    enrol,
    eventually,
    nothing_arrives,
    relayed_barrier,
    room_id_of,
    text_with,
)
from tests.matrix_harness import MakeClient, MakeUser
from tests.pg import fresh_schema

# Loaded into the bot process only: it kills it at the point the test names.
CRASHPOINTS = str(Path(__file__).resolve().parent / "crashpoints")
DATA_KEY = "process-data-key-0123456789abcdef"
NOTICE = re.compile(r"Held for release approval: (R\d+)")
HELD = "GEHEIM // REL TO NATO"
# Below approval_from: relayed at once, so its copy arriving after the released one proves
# nothing more of the held item was on its way.
LOW = "VS-VERTRAULICH // REL TO NATO"
SIGKILLED = -9


@dataclass
class ReleaseScenario:
    process: ProcessScenario
    second: E2EEClient  # the second officer: an approver, in deu


@contextlib.asynccontextmanager
async def release_scenario(
    tmp_path: Path,
    server: DevServer,
    make_user: MakeUser,
    make_client: MakeClient,
    database_url: str,
    **first_env: str,
) -> AsyncIterator[ReleaseScenario]:
    """tests/bot_harness.process_scenario's bot process and people, on a route deu -> nato-s
    that holds GEHEIM and above for a second officer (and that officer, in deu)."""
    bot_user, admin, officer = make_user("liaison"), make_user("admin"), make_user("lo")
    second, member = make_user("lo2"), make_user("nor")
    rooms = rooms_config() + (
        'approval = "second-officer"\n'
        'approval_from = "GEHEIM"\n'
        f'approvers = ["{officer.user_id}", "{second.user_id}"]\n'
        'approval_timeout = "4h"\n'
    )
    config_path = tmp_path / "config.toml"
    write_config(
        config_path,
        server,
        bot_user,
        admin.user_id,
        officer.user_id,
        rooms,
        database_url=database_url,
        data_key=DATA_KEY,
    )
    config = load_config(config_path)
    await asyncio.to_thread(upgrade, config.database_url())
    store = Store.from_url(config.database_url(), audit_key_from(DATA_KEY))  # as the CLI would
    register = ClearanceRegister(store)
    register.grant("cli:test", officer.user_id, "DEU GEHEIM", nationality="DEU")
    register.grant("cli:test", second.user_id, "DEU GEHEIM", nationality="DEU")
    register.grant("cli:test", member.user_id, "NATO SECRET", nationality="NOR")
    env = {
        **os.environ,
        "LIAISON_TEST_PASSWORD": bot_user.password,
        "LIAISON_TEST_PICKLE_KEY": "process-pickle-key-0123456789abcdef",
        "LIAISON_TEST_DATA_KEY": DATA_KEY,
    }
    process = ProcessScenario(config_path, env, tmp_path / "bot.log", store)
    process.start(**first_env)
    try:
        await process.wait_for_log("first sync after")
        process.deu, process.nato_s = room_id_of(store, "deu"), room_id_of(store, "nato-s")
        admin_client = await make_client(admin)
        dm = await open_dm(admin_client, bot_user.user_id)
        process.officer, process.member = await make_client(officer), await make_client(member)
        second_client = await make_client(second)
        await enrol(
            (admin_client, dm),
            [],
            [(process.officer, "deu"), (second_client, "deu"), (process.member, "nato-s")],
        )
        yield ReleaseScenario(process, second_client)
    finally:
        await process.stop()
        store.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
@pytest.mark.parametrize(
    "crash_point", ["release-before-approve", "release-after-approve", "release-after-send"]
)
async def test_a_release_approval_survives_a_crash_exactly_once(
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
        async with release_scenario(
            tmp_path,
            synapse,
            make_user,
            make_client,
            url,
            LIAISON_TEST_CRASH_AT=crash_point,
            PYTHONPATH=os.pathsep.join(filter(None, [CRASHPOINTS, os.environ.get("PYTHONPATH")])),
        ) as sc:
            s = sc.process
            phrase = f"release-{crash_point}-{secrets.token_hex(4)}"
            mark = s.member.event_count(s.nato_s)
            deu_mark = s.officer.event_count(s.deu)
            item = await s.officer.send_text(s.deu, f"[{HELD}] {phrase}")
            notice = await s.officer.wait_for(
                s.deu,
                lambda e: isinstance(e, RoomMessageNotice) and NOTICE.search(e.body) is not None,
                60,
                after=deu_mark,
            )
            found = NOTICE.search(notice.body)
            assert found is not None
            rid = found.group(1)
            number = parse_release_id(rid)
            assert number is not None
            request = s.store.release_request(number)
            assert request is not None and request.item_event_id == item
            assert [t.target_key for t in request.held_targets] == ["nato-s"]

            await sc.second.send_text(s.deu, f"!release approve {rid}")
            assert await asyncio.to_thread(s.proc.wait, 60) == SIGKILLED  # tests/crashpoints

            # What the crash left in the store.
            request = s.store.release_request(number)
            assert request is not None
            target = request.target("nato-s")
            assert target is not None
            pending = [r for r in s.store.pending_relays() if r.item_event_id == item]
            if crash_point == "release-before-approve":
                assert target.state is HoldState.HELD
                assert s.store.ledger_of(item) == []
            else:
                assert target.state is HoldState.APPROVED
                assert target.decided_by == sc.second.user_id
                assert [r.target_key for r in pending] == ["nato-s"]

            s.start()  # no crash point now
            await s.wait_for_log("reusing device")
            # The restart re-drives the pending copy (after the commit), or, before it, acts
            # on the approval command that was never marked handled: either way one copy.
            await s.member.wait_for_text(s.nato_s, phrase, timeout=60, after=mark)
            # After the send, the copy was there before the crash: the restart's re-drive (the
            # same transaction id, so the homeserver answers with that copy) marks it sent.
            await eventually(
                lambda: [r.state for r in s.store.copies_of(item)] == [RelayState.SENT],
                timeout=60,
                what="the copy's ledger row marked sent",
            )
            await nothing_arrives(
                s.member,
                s.nato_s,
                text_with(phrase),
                since=mark,
                already=1,
                barrier=relayed_barrier(s.officer, s.deu, LOW),
                what="the released copy",
            )
            ledger = s.store.copies_of(item)
            assert [(r.target_key, r.state) for r in ledger] == [("nato-s", RelayState.SENT)]
            assert [r for r in s.store.pending_relays() if r.item_event_id == item] == []
            request = s.store.release_request(number)
            assert request is not None and not request.is_pending
            target = request.target("nato-s")
            assert target is not None and target.state is HoldState.APPROVED
            assert target.decided_by == sc.second.user_id
            assert s.store.held_item_ids() == set()
