"""The README's "fails closed" claim of the homeserver gate, on the real Synapse the suite
shares (its gate loads this tree's bot/gate): "if the register cannot be read (database
down, missing file or table, a label on record that does not parse), invites and joins to
managed rooms are refused with the reason", and a register that stops answering is
"refused, not waited on". Each case: a bot of its own whose register is broken that way,
its labelled room, an invite and a join the server refuses with the reason in the client's
error, and the same reason in Synapse's log. (A missing file and a server nobody listens on
are tests/test_gate.py's and test_gate_rules.py's; the rule's own limits against a hung
register are test_gate_timeouts.py's, without Synapse.)

Every register broken here is taken off the gate's registers file afterwards, so later tests
on the shared server never wait on it."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.devtools.devserver import DevServer, RegisteredUser
from bot.gate.rules import LABEL_EVENT
from bot.storage import Origin, RoomRecord, Store, audit_key_from
from bot.storage.migrate import upgrade
from policy.ids import RoomId, RoomKey
from tests.matrix_harness import MakeUser
from tests.test_gate import NATO_SECRET_LABEL, _call, _q, _refused
from tests.test_gate_timeouts import SilentListener

DATA_KEY = "claims-gate-data-key-0123456789abcdef"
LIMIT = 3.0  # the README's connection limit; the read deadline is 4 s
DEADLINE = 4.0 + 2.0  # the read deadline and scheduling slack on a loaded machine


@pytest.fixture
def ghost(make_user: MakeUser, synapse: DevServer) -> Iterator[RegisteredUser]:
    """A bot account of the test's own; its register entry is removed afterwards."""
    bot = make_user("ghostbot")
    try:
        yield bot
    finally:
        synapse.remove_register(bot.user_id)


async def _labelled_room(server: DevServer, bot: RegisteredUser) -> str:
    created = await _call(
        server,
        "POST",
        "/_matrix/client/v3/createRoom",
        {
            "preset": "private_chat",
            "initial_state": [{"type": LABEL_EVENT, "state_key": "", "content": NATO_SECRET_LABEL}],
        },
        bot.access_token,
    )
    room_id: str = created["room_id"]
    return room_id


def _register(path: Path) -> Store:
    """A migrated register, written and signed as the bot writes it."""
    url = f"sqlite:///{path}"
    upgrade(url)
    store = Store.from_url(url, audit_key_from(DATA_KEY))
    store.key_audit_log()
    return store


def _room_row(room_id: str, label: str) -> RoomRecord:
    return RoomRecord(
        key=RoomKey("nato-s"),
        name="NATO SECRET liaison",
        label=label,
        scheme="NATO",
        rank=3,
        audience=("DEU", "POL"),
        room_id=RoomId(room_id),
        origin=Origin.CONFIG,
    )


async def _invite_and_join_refused(
    server: DevServer, bot: RegisteredUser, guest: RegisteredUser, room_id: str
) -> tuple[str, str, str]:
    """The invite's error, the join's error, and what Synapse logged meanwhile."""
    offset = server.log_path.stat().st_size
    invited = await _refused(
        server,
        "POST",
        f"/_matrix/client/v3/rooms/{_q(room_id)}/invite",
        {"user_id": guest.user_id},
        bot.access_token,
    )
    joined = await _refused(
        server, "POST", f"/_matrix/client/v3/join/{_q(room_id)}", {}, guest.access_token
    )
    return invited, joined, server.log_since(offset)


async def test_a_register_without_its_tables_refuses_with_the_reason(
    synapse: DevServer, make_user: MakeUser, ghost: RegisteredUser, tmp_path: Path
) -> None:
    empty = tmp_path / "register.db"
    sqlite3.connect(empty).execute("CREATE TABLE unrelated (x INTEGER)").connection.close()
    synapse.add_register(
        {"bot_user_id": ghost.user_id, "database": f"sqlite:///{empty}"}, data_key=DATA_KEY
    )
    room_id = await _labelled_room(synapse, ghost)
    guest = make_user("guest")

    invited, joined, log = await _invite_and_join_refused(synapse, ghost, guest, room_id)

    reason = (
        f"the clearance register of {ghost.user_id} cannot be read (OperationalError: "
        "(sqlite3.OperationalError) no such table: rooms"
    )
    assert reason in invited and reason in joined, (invited, joined)
    assert f"managed room {room_id} admits nobody until it can" in invited
    refused = f"liaison gate refused {ghost.user_id}'s invite of {guest.user_id} to {room_id}"
    assert f"{refused}: {reason}" in log, log
    assert f"liaison gate refused {guest.user_id}'s join of {room_id}: {reason}" in log, log


async def test_a_label_on_record_that_does_not_parse_refuses_with_the_reason(
    synapse: DevServer, make_user: MakeUser, ghost: RegisteredUser, tmp_path: Path
) -> None:
    store = _register(tmp_path / "register.db")
    guest = make_user("cleared")
    try:
        # Signed as the bot signs it (the row verifies): only its label is unreadable.
        store.grant("test", guest.user_id, "NATO", "NATO SECRET", 3, nationality="POL")
        synapse.add_register(
            {"bot_user_id": ghost.user_id, "database": f"sqlite:///{tmp_path / 'register.db'}"},
            data_key=DATA_KEY,
        )
        room_id = await _labelled_room(synapse, ghost)
        store.save_room(_room_row(room_id, "NATO SEKRIT"))
    finally:
        store.close()

    invited, joined, log = await _invite_and_join_refused(synapse, ghost, guest, room_id)

    reason = "the label on record for nato-s (NATO SEKRIT) cannot be read: "
    assert reason in invited and reason in joined, (invited, joined)
    assert "unknown" in invited.split(reason)[1], invited  # the parser's own words follow
    refused = f"liaison gate refused {ghost.user_id}'s invite of {guest.user_id} to {room_id}"
    assert f"{refused}: {reason}" in log, log
    assert f"liaison gate refused {guest.user_id}'s join of {room_id}: {reason}" in log, log


async def test_a_register_that_accepts_and_never_answers_refuses_within_seconds(
    synapse: DevServer, make_user: MakeUser, ghost: RegisteredUser, tmp_path: Path
) -> None:
    # The room is made while the register reads (and lists nothing), so that making it
    # waits on nothing; then the register becomes a server that accepts and never answers.
    store = _register(tmp_path / "register.db")
    store.close()
    synapse.add_register(
        {"bot_user_id": ghost.user_id, "database": f"sqlite:///{tmp_path / 'register.db'}"},
        data_key=DATA_KEY,
    )
    room_id = await _labelled_room(synapse, ghost)
    guest = make_user("guest")
    silent = SilentListener()
    silent.start()
    try:
        synapse.add_register(
            {
                "bot_user_id": ghost.user_id,
                "database": f"postgresql+psycopg://gate@127.0.0.1:{silent.port}/liaison",
            },
            data_key=DATA_KEY,
        )
        offset = synapse.log_path.stat().st_size
        started = time.monotonic()
        invited = await _refused(
            synapse,
            "POST",
            f"/_matrix/client/v3/rooms/{_q(room_id)}/invite",
            {"user_id": guest.user_id},
            ghost.access_token,
        )
        elapsed = time.monotonic() - started
        log = synapse.log_since(offset)
        held = len(silent.held)
    finally:
        await asyncio.to_thread(silent.stop)
    assert held >= 1, "the gate never reached the register's listener"
    reason = f"the clearance register of {ghost.user_id} cannot be read (OperationalError: "
    assert reason in invited and "connection timeout expired" in invited, invited
    assert f"managed room {room_id} admits nobody until it can" in invited
    refused = f"liaison gate refused {ghost.user_id}'s invite of {guest.user_id} to {room_id}"
    assert f"{refused}: {reason}" in log, log
    assert "connection timeout expired" in log, log
    # it waited for the limit (the listener held it), and not much longer
    assert LIMIT - 0.1 <= elapsed < DEADLINE, elapsed
