"""The bot on a real Synapse: rooms, commands, register, audit, restart (issue: bot core)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nio import RoomMemberEvent, RoomMessageNotice

from bot.gate.rules import LABEL_EVENT
from bot.services.rooms import provision
from bot.wire import MEGOLM
from policy import parse_marking
from policy.adatp4774 import from_json, to_label
from policy.ids import UserId
from tests.bot_harness import (
    BotEnv,
    audited,
    enrol,
    eventually,
    in_audit,
    open_dm,
    restart,
    talk,
)
from tests.matrix_harness import E2EEClient, MakeClient, MakeUser


async def test_rooms_are_encrypted_invite_only_and_labelled(bot_env: BotEnv) -> None:
    assert bot_env.bot is not None
    gateway = bot_env.bot.gateway
    assert gateway is not None
    state = await gateway.state(bot_env.room_id("nato-s"))
    assert state[("m.room.encryption", "")].content["algorithm"] == MEGOLM
    assert state[("m.room.join_rules", "")].content["join_rule"] == "invite"
    assert state[("m.room.history_visibility", "")].content["history_visibility"] == "joined"
    assert state[("m.room.guest_access", "")].content["guest_access"] == "forbidden"
    assert state[("m.room.topic", "")].content["topic"] == "NATO SECRET — NATO SECRET liaison"
    label = state[(LABEL_EVENT, "")].content
    assert label["banner"] == "NATO SECRET" and label["scheme"] == "NATO" and label["rank"] == 3
    assert len(label["audience"]) == 32
    levels = state[("m.room.power_levels", "")].content
    assert levels["invite"] == levels["kick"] == levels["ban"] == 100
    powerful = {u for u, lvl in levels.get("users", {}).items() if lvl >= 50}
    assert powerful <= {bot_env.bot_user.user_id}  # room v12+: the creating bot is implicit
    deu = (await gateway.state(bot_env.room_id("deu")))[(LABEL_EVENT, "")].content
    assert deu["audience"] == ["DEU"] and deu["banner"] == "DEU GEHEIM"
    # the same structure as the label inside every relayed copy (ADatP-4774, JSON form)
    originator = from_json(
        {"originatorConfidentialityLabel": deu["originatorConfidentialityLabel"]}
    ).originator
    assert to_label(originator) == parse_marking("DEU GEHEIM")
    assert (originator.policy, originator.classification) == ("DEU", "GEHEIM")


async def test_provisioning_again_with_the_same_config_changes_nothing(bot_env: BotEnv) -> None:
    bot = bot_env.bot
    assert bot is not None and bot.gateway is not None
    managed = bot.rooms.by_key["nato-s"]
    joined = await bot.gateway.joined_rooms()
    room_id, changed = await provision(
        bot.gateway,
        key="nato-s",
        name=managed.name,
        room=managed.policy,
        room_id=managed.room_id,
        previous_rank=managed.policy.rank,
        joined=joined,
    )
    assert (room_id, changed) == (managed.room_id, [])


async def test_cleared_officer_is_invited_and_reads_the_bot(
    bot_env: BotEnv, make_client: MakeClient
) -> None:
    admin = await make_client(bot_env.admin)
    officer = await make_client(bot_env.officer)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    officer_id = UserId(bot_env.officer.user_id)
    await talk(
        admin,
        dm,
        f'!clearance grant {officer_id} "NATO SECRET" --nationality DEU',
        "Clearance updated",
    )
    reply = await talk(admin, dm, f"!invite {officer_id} nato-s", "Invited")
    assert "grant NATO SECRET covers NATO SECRET" in reply.body
    room_id = await officer.wait_for_invite(inviter=bot_env.bot_user.user_id)
    assert room_id == bot_env.room_id("nato-s")
    await officer.join(room_id)
    mark = officer.event_count(room_id)
    asked = await officer.send_text(room_id, "!rooms")
    answer = await officer.wait_for(
        room_id,
        lambda e: isinstance(e, RoomMessageNotice) and "Managed rooms" in e.body,
        after=mark,
    )
    assert isinstance(answer, RoomMessageNotice)
    assert "nato-s — NATO SECRET" in answer.body
    assert answer.source["content"]["m.relates_to"] == {"m.in_reply_to": {"event_id": asked}}
    assert not officer.undecryptable(room_id)


async def test_uncleared_user_is_refused_with_the_reason(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    stranger = make_user("stranger")
    reply = await talk(admin, dm, f"!invite {stranger.user_id} nato-s", "may not join")
    assert f"no clearance on record for {stranger.user_id}" in reply.body
    french = make_user("fra-officer")
    await talk(
        admin,
        dm,
        f'!clearance grant {french.user_id} "NATO SECRET" --nationality FRA',
        "Clearance updated",
    )
    reply = await talk(admin, dm, f"!invite {french.user_id} deu", "may not join")
    assert "nationality FRA is not in the room's audience (DEU)" in reply.body
    assert "no DEU grant" in reply.body
    await audited(bot_env, "invite.refused", french.user_id)


async def test_bad_arguments_answer_with_usage_and_change_nothing(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    someone = make_user("someone").user_id
    cases = [
        (f"!clearance grant {someone}", "Usage: !clearance grant @USER MARKING"),
        (
            f'!clearance grant {someone} "NATO SECRTE" --nationality DEU',
            "unknown marking 'NATO SECRTE'",
        ),
        (f'!clearance grant {someone} "NATO SECRET"', "a first grant needs --nationality"),
        (f'!clearance grant {someone} "NATO SECRET" --nationality XX', "not an ISO 3166-1"),
        (
            f'!clearance grant {someone} "NATO SECRET" --nationality DEU --caveat FOO',
            "unknown caveat 'FOO'",
        ),
        (f'!clearance grant {someone} "NATO SECRET" --expires 31.12.2027', "is not a date"),
        ("!clearance revoke bob", "expected a user like @name:server"),
        ("!invite @a:b", "Usage: !invite @USER ROOM"),
        (f"!invite {someone} nowhere", "no managed room 'nowhere'"),
        ("!audit many", "expected a whole number"),
        ("!clearanse list", "did you mean !clearance list"),
    ]
    for text, expected in cases:
        await talk(admin, dm, text, expected)
    await talk(admin, dm, f"!clearance show {someone}", "no clearance on record")


async def test_non_admin_running_an_admin_command_is_refused_and_audited(
    bot_env: BotEnv, make_client: MakeClient
) -> None:
    assert bot_env.bot is not None
    commands = bot_env.bot.commands
    officer_id = UserId(bot_env.officer.user_id)
    officer = await make_client(bot_env.officer)
    dm = await open_dm(officer, bot_env.bot_user.user_id)
    before = await commands.clearance(officer_id)
    await talk(officer, dm, "!clearance list", "is for admins only")
    # A complete grant (with a nationality, so that it would succeed for an admin whether or
    # not the officer has a record yet): refused, and the record is exactly as it was.
    await talk(
        officer,
        dm,
        f'!clearance grant {officer_id} "COSMIC TOP SECRET" --nationality DEU',
        "is for admins only",
    )
    assert await commands.clearance(officer_id) == before

    def denied(entries: list[Any]) -> list[tuple[str, str]] | None:
        found = [(e.actor, e.subject) for e in entries if e.action == "command.denied"]
        return found if found[:1] == [(officer_id, "clearance grant")] else None

    found = await in_audit(bot_env, denied, "the refused grant audited", limit=10)
    assert found[:2] == [(officer_id, "clearance grant"), (officer_id, "clearance list")]


async def test_register_and_log_replies_go_to_the_callers_dm(
    bot_env: BotEnv, make_client: MakeClient
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    assert bot_env.bot is not None
    (newest_before,) = await bot_env.bot.commands.audit_recent(1)
    reply = await talk(admin, dm, "!audit 5", "Audit log: last")
    # The five newest entries when asked, oldest first, each as the log holds it.
    shown = [line for line in reply.body.splitlines() if line.startswith("• #")]
    ids = [int(line.split()[1][1:]) for line in shown]
    assert len(ids) == 5 and ids == list(range(ids[0], ids[0] + 5))
    assert ids[-1] >= newest_before.id
    logged = {e.id: e for e in await bot_env.bot.commands.audit_recent(100)}
    for entry_id, line in zip(ids, shown, strict=True):
        assert f" {logged[entry_id].actor} {logged[entry_id].action}" in line, line
    await talk(admin, dm, "!audit verify", "Audit chain intact")
    await talk(admin, dm, "!whoami", "no clearance on record")


async def test_whoami_in_a_managed_room_answers_in_a_new_dm(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    analyst = make_user("analyst")
    client = await make_client(analyst)
    (room_id,) = await enrol(
        (admin, dm), [(analyst.user_id, "NATO SECRET", "ITA")], [(client, "nato-s")]
    )
    await talk(client, room_id, "!whoami", "Answered in your direct messages")
    assert "NATO SECRET" not in "\n".join(client.texts(room_id)[-1:])
    dm_id = await client.wait_for_invite(inviter=bot_env.bot_user.user_id)
    await client.join(dm_id)
    event = await client.wait_for_text(dm_id, "nationality ITA")
    assert "grants: NATO SECRET" in event.body


async def test_invite_from_a_stranger_is_declined(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    stranger = await make_client(make_user("stranger"))
    room_id = await stranger.create_dm(bot_env.bot_user.user_id)
    await stranger.wait_for(
        room_id,
        lambda e: (
            isinstance(e, RoomMemberEvent)
            and e.state_key == bot_env.bot_user.user_id
            and e.membership == "leave"
        ),
    )
    await audited(bot_env, "invite.declined", stranger.user_id)


async def test_edited_command_is_never_executed(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    target = UserId(make_user("edited").user_id)
    original = await admin.send_text(dm, "typo")
    await admin.send_event(
        dm,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": f'* !clearance grant {target} "NATO SECRET" --nationality DEU',
            "m.new_content": {
                "msgtype": "m.text",
                "body": f'!clearance grant {target} "NATO SECRET" --nationality DEU',
            },
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        },
    )
    await talk(admin, dm, "!whoami", "Roles: admin")  # the bot has handled the edit by now
    assert bot_env.bot is not None
    assert await bot_env.bot.commands.clearance(target) is None


async def test_restart_keeps_the_device_and_still_decrypts(
    bot_env: BotEnv, make_client: MakeClient
) -> None:
    bot = bot_env.bot
    assert bot is not None and bot.client is not None
    device_before = bot.client.device_id
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    await restart(bot_env)
    assert bot_env.bot is not None and bot_env.bot.client is not None
    assert bot_env.bot.client.device_id == device_before
    reply = await talk(admin, dm, "!whoami", "Roles: admin")
    assert reply.sender == bot_env.bot_user.user_id
    devices = await bot_env.bot.client.devices()
    assert [d.id for d in devices.devices if d.id == device_before] == [device_before]


async def test_expiry_changed_from_the_cli_removes_within_the_sweep(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    member = make_user("expiring")
    client = await make_client(member)
    (room_id,) = await enrol(
        (admin, dm), [(member.user_id, "NATO SECRET", "NOR")], [(client, "nato-s")]
    )
    # Another process writes to the same database; the running bot notices at its next
    # sweep. Straight into the store: the register refuses an expiry in the past (issue 28),
    # and a clearance that runs out meanwhile is what this stands for.
    from bot.storage import Store

    assert bot_env.bot is not None  # the CLI holds the data key, as the bot does
    offline = Store.from_url(bot_env.config.database_url(), bot_env.bot.store.audit_key)
    try:
        yesterday = (datetime.now(UTC) - timedelta(days=1)).date()
        offline.grant("cli:test", member.user_id, "NATO", "NATO SECRET", 3, expires=yesterday)
    finally:
        offline.close()
    await eventually(lambda: _not_in(client, room_id), timeout=20, what="expired member removed")
    removal = await audited(bot_env, "member.removed", member.user_id)
    assert "expired on" in removal.detail["reason"]


async def test_revoke_removes_at_once(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    member = make_user("revoked")
    client = await make_client(member)
    (room_id,) = await enrol(
        (admin, dm), [(member.user_id, "NATO SECRET", "DNK")], [(client, "nato-s")]
    )
    reply = await talk(admin, dm, f"!clearance revoke {member.user_id}", "Clearance revoked")
    assert "removed from nato-s" in reply.body
    assert room_id not in await client.joined_rooms()


async def _not_in(client: E2EEClient, room_id: str) -> bool:
    return room_id not in await client.joined_rooms()


@pytest.fixture(autouse=True)
def _bot_running(bot_env: BotEnv) -> None:
    assert bot_env.bot is not None, "an earlier test left the bot stopped"
