"""Issue 31 (part C): the register offline, as the README shows it — `liaison-bot clearance
revoke`, `clearance list` and `audit verify` run as their own processes (the console script)
against the database of a bot that has been running and writing to it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from nio import RoomMemberEvent
from sqlalchemy import text

from bot.devtools.botenv import SECRETS
from tests.bot_harness import BotEnv, audited, enrol
from tests.matrix_harness import MakeClient, MakeUser

SCRIPT = Path(sys.executable).parent / "liaison-bot"


async def cli(
    bot_env: BotEnv, *args: str, data_key: bool = True
) -> subprocess.CompletedProcess[str]:
    """`liaison-bot ARGS --config …` in its own process, with the bot's data key in the
    variable its config names (as the README says to run it), or without it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIAISON_")}
    if data_key:
        env[bot_env.config.storage.data_key_env] = SECRETS.data_key
    command = [str(SCRIPT), *args, "--config", str(bot_env.config_path)]
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=env, timeout=120
    )


def records_of(listing: str) -> dict[str, str]:
    """`clearance list` output: each record's lines, by user id (a record starts with it)."""
    records: dict[str, str] = {}
    user = ""
    for line in listing.splitlines():
        if line.startswith("@"):
            user = line.split(" — ")[0]
            records[user] = ""
        records[user] += line + "\n"
    return records


async def test_cli_revoke_and_list_change_the_bots_register(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    assert bot_env.bot is not None and bot_env.store is not None
    member = make_user("cli-member")
    other = make_user("cli-other")
    member_client = await make_client(member)
    (nato_s,) = await enrol(
        bot_env,
        [(member.user_id, "NATO SECRET", "NOR"), (other.user_id, "DEU GEHEIM", "DEU")],
        [(member_client, "nato-s")],
    )

    # `clearance list` prints every record the bot wrote, as it holds it.
    listed = await cli(bot_env, "clearance", "list")
    assert listed.returncode == 0, listed.stderr
    records = records_of(listed.stdout)
    assert set(records) == {member.user_id, other.user_id}, listed.stdout
    assert "nationality NOR" in records[member.user_id]
    assert "grants: NATO SECRET" in records[member.user_id]
    assert "status: active" in records[member.user_id]
    assert "nationality DEU" in records[other.user_id]
    assert "grants: DEU GEHEIM" in records[other.user_id]

    # `clearance revoke … all` changes the register the running bot reads, and is audited
    # like the chat command (same action, same detail), by the CLI's actor.
    revoked = await cli(bot_env, "clearance", "revoke", member.user_id, "all")
    assert revoked.returncode == 0, revoked.stderr
    assert "status: revoked" in revoked.stdout and "grants: none" in revoked.stdout
    record = bot_env.store.clearance(member.user_id)
    assert record is not None and record.revoked_at is not None and record.grants == ()
    entry = await audited(bot_env, "clearance.revoke", member.user_id)
    assert entry.actor.startswith("cli:") and entry.detail == {"scope": "all"}
    untouched = bot_env.store.clearance(other.user_id)
    assert untouched is not None and untouched.revoked_at is None

    listed = await cli(bot_env, "clearance", "list")
    assert listed.returncode == 0, listed.stderr
    member_block = records_of(listed.stdout)[member.user_id]
    assert "status: revoked" in member_block and "grants: none" in member_block

    # ... and the running bot acts on it at its next sweep: the member is removed.
    gone = await member_client.wait_for(
        nato_s,
        lambda e: (
            isinstance(e, RoomMemberEvent)
            and e.state_key == member.user_id
            and e.membership == "leave"
            and e.sender == bot_env.bot_user.user_id
        ),
        timeout=30,
    )
    assert gone is not None
    await audited(bot_env, "member.removed", member.user_id)
    assert (await cli(bot_env, "audit", "verify")).returncode == 0


async def test_cli_audit_verify_names_the_tampered_row(bot_env: BotEnv) -> None:
    assert bot_env.bot is not None and bot_env.store is not None
    store = bot_env.store
    intact = await cli(bot_env, "audit", "verify")
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert intact.stdout.startswith("audit log intact: ") and "entries intact" in intact.stdout

    # One row in the middle of the log, changed with SQL (write access to the database).
    with store.engine.begin() as conn:
        ids = [row[0] for row in conn.execute(text("SELECT id FROM audit_log ORDER BY id"))]
        target = ids[len(ids) // 2]
        (original,) = conn.execute(
            text("SELECT actor FROM audit_log WHERE id = :id"), {"id": target}
        ).one()
        conn.execute(
            text("UPDATE audit_log SET actor = :actor WHERE id = :id"),
            {"actor": "@someone-else:example.org", "id": target},
        )
    try:
        broken = await cli(bot_env, "audit", "verify")
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert broken.stdout.strip() == (
            f"audit log BROKEN: row {target}: contents were modified"
        ), broken.stdout
    finally:
        with store.engine.begin() as conn:
            conn.execute(
                text("UPDATE audit_log SET actor = :actor WHERE id = :id"),
                {"actor": original, "id": target},
            )
    assert (await cli(bot_env, "audit", "verify")).returncode == 0

    # Without the data key the keyed log cannot be checked: refused in one line that says
    # what to set, not reported as a broken log.
    keyless = await cli(bot_env, "audit", "verify", data_key=False)
    assert keyless.returncode == 2, keyless.stdout + keyless.stderr
    assert keyless.stdout == ""
    lines = keyless.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), keyless.stderr
    assert bot_env.config.storage.data_key_env in lines[0] or "data key" in lines[0]
