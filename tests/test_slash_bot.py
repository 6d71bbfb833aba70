"""Structured slash commands (MSC4332) on a real Synapse: the `org.matrix.msc4332.commands`
state event the bot keeps in each managed room and DM (what may be used there, with the
values of the moment), and structured commands (`org.matrix.msc4332.command`) run through
the same gate, permissions and audit as typed ones."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any

import pytest
from nio import (
    RoomGetStateEventResponse,
    RoomGetStateResponse,
    RoomMessageNotice,
    RoomPutStateResponse,
)

from bot.devtools.botenv import rooms_config
from bot.devtools.e2ee_client import E2EEClient, open_dm, talk
from bot.matrix.gateway import Gateway
from bot.services.ports import StateEvent
from bot.services.slash import may_set
from commands.slash import COMMAND_FIELD, COMMANDS_EVENT, TYPES, syntax_of
from policy.ids import RoomKey, UserId
from tests.bot_harness import (
    BotEnv,
    enrol,
    eventually,
    in_audit,
    replying_to,
    restart,
)
from tests.matrix_harness import MakeClient, MakeUser

BOT_EXTRA_BOT = 'admin_room = "ops"'
BOT_ROOMS = (
    rooms_config()
    + """
[[rooms]]
key = "ops"
name = "Security operations"
label = "NATO SECRET"
"""
)


# -- reading the state event ---------------------------------------------------------------


async def commands_event(env: BotEnv, room_id: str) -> Mapping[str, Any] | None:
    """The bot's commands state event in a room as the homeserver holds it (event id and
    all), or None."""
    assert env.bot is not None
    response = await env.bot.client.room_get_state(room_id)
    assert isinstance(response, RoomGetStateResponse), response
    for event in response.events:
        if event["type"] == COMMANDS_EVENT and event["state_key"] == env.bot_user.user_id:
            found: Mapping[str, Any] = event
            return found
    return None


async def published(env: BotEnv, room_id: str, check: Any = bool) -> Mapping[str, Any]:
    """The event, once it is there and its content passes `check`."""

    async def event() -> Mapping[str, Any] | None:
        found = await commands_event(env, room_id)
        return found if found is not None and check(found["content"]) else None

    result: Mapping[str, Any] = await eventually(event, 30, f"commands event in {room_id}")
    return result


def names(content: Mapping[str, Any]) -> set[str]:
    return {c["syntax"].split(" {")[0].split(" --")[0] for c in content["commands"]}


def enum_values(content: Mapping[str, Any]) -> set[str]:
    return {
        value
        for command in content["commands"]
        for argument in command["arguments"]
        for value in argument.get("enum", [])
    }


def shape_problems(content: Mapping[str, Any]) -> list[str]:
    """What in the content does not fit MSC4332 as published: a sigil, commands each with a
    syntax whose `{placeholders}` match its arguments one for one, every argument of a type
    the MSC lists, an enum with values, a variadic one only last, descriptions as m.text."""
    problems = []
    if content.get("sigil") != "!":
        problems.append(f"sigil {content.get('sigil')!r}")
    if not content.get("commands"):
        problems.append("no commands")
    for command in content.get("commands", []):
        syntax, arguments = command["syntax"], command["arguments"]
        placeholders = re.findall(r"\{([^}]*)\}", syntax)
        if len(placeholders) != len(arguments):
            problems.append(f"{syntax}: {len(placeholders)} placeholders, {len(arguments)} args")
        if not command["description"]["m.text"][0]["body"]:
            problems.append(f"{syntax}: no description")
        for n, argument in enumerate(arguments):
            if argument["type"] not in TYPES:
                problems.append(f"{syntax}: type {argument['type']!r}")
            if argument["type"] == "enum" and not (
                argument.get("enum") and all(isinstance(v, str) and v for v in argument["enum"])
            ):
                problems.append(f"{syntax}: an enum without values")
            if argument.get("variadic") and n != len(arguments) - 1:
                problems.append(f"{syntax}: variadic argument {n} is not last")
            if n < len(placeholders) and bool(argument.get("variadic")) != placeholders[n].endswith(
                "..."
            ):
                problems.append(f"{syntax}: argument {n} variadic but not `...` or the reverse")
            if not argument["description"]["m.text"][0]["body"]:
                problems.append(f"{syntax}: argument {n} has no description")
    return problems


# -- the state event -----------------------------------------------------------------------


async def test_each_room_offers_the_commands_usable_there(
    bot_env: BotEnv, make_client: MakeClient
) -> None:
    assert bot_env.bot is not None
    bot = bot_env.bot
    nato = (await published(bot_env, bot_env.room_id("nato-s")))["content"]
    deu = (await published(bot_env, bot_env.room_id("deu")))["content"]
    ops = (await published(bot_env, bot_env.room_id("ops")))["content"]
    # A DM the bot made (it holds the power there): its partner's commands, an admin's.
    admin = await make_client(bot_env.admin, auto_join=True)
    dm = await bot.messenger.direct_room_for(UserId(bot_env.admin.user_id))
    direct = (await published(bot_env, dm))["content"]
    for content in (nato, deu, ops, direct):
        assert shape_problems(content) == []
    assert names(nato) == names(deu)  # members of either room may use the same commands
    assert "help" in names(nato) and "rooms" in names(nato)
    assert not {"clearance grant", "clearance list", "room create"} & names(nato)
    assert {"clearance grant", "room create"} <= names(ops) == names(direct)
    # The values of the moment: the room keys, the schemes in force, the precedences.
    values = enum_values(direct)
    assert {"deu", "nato-s", "ops"} <= values
    assert {"NATO", "EU", "DEU"} <= values
    assert "FLASH" in bot.slash.vocabulary().precedences  # offered where a command takes one
    types = {a["type"] for c in direct["commands"] for a in c["arguments"]}
    assert {"user_id", "enum", "string", "integer", "boolean"} <= types <= TYPES
    assert admin.user_id in (bot.gateway.members(dm) or {})


async def test_the_room_keys_follow_task_force_rooms_and_a_restart_changes_nothing(
    bot_env: BotEnv, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert bot_env.bot is not None
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    nato_room = bot_env.room_id("nato-s")
    key = f"tf-{secrets.token_hex(3)}"
    await talk(admin, dm, f'!room create {key} "Slash cell" "NATO SECRET"', f"Created {key}")
    tf_room = bot_env.room_id(key)
    ops = bot_env.room_id("ops")  # the admin room: every key
    await published(bot_env, ops, lambda content: key in enum_values(content))
    own = (await published(bot_env, tf_room, lambda content: key in enum_values(content)))[
        "content"
    ]
    assert "clearance grant" not in names(own)  # a member room like any other
    assert enum_values(own) & {"deu", "nato-s", "ops"} == set()  # its own key only
    # State is never encrypted: a managed room names no other room's key.
    nato = (await published(bot_env, nato_room))["content"]
    assert key not in enum_values(nato) and "nato-s" in enum_values(nato)

    await talk(admin, dm, f"!room close {key}", f"Closed {key}")
    await published(bot_env, ops, lambda content: key not in enum_values(content))
    # The closed room offers nothing any more.
    await published(bot_env, tf_room, lambda content: content == {})

    rooms = [bot_env.room_id(k) for k in ("nato-s", "deu", "ops")]
    before = {r: (await published(bot_env, r))["event_id"] for r in rooms}
    # Synapse itself drops a state event that changes nothing, so the event ids alone
    # would not show a send: every state write of the restarted bot is noted on its way.
    sent: list[tuple[str, str]] = []
    put_state = Gateway.put_state

    async def noted(
        self: Gateway, room_id: str, event_type: str, content: Any, state_key: str = ""
    ) -> None:
        sent.append((room_id, event_type))
        await put_state(self, room_id, event_type, content, state_key)

    monkeypatch.setattr(Gateway, "put_state", noted)
    await restart(bot_env)
    assert bot_env.bot is not None
    # Once this pass is done, so is the start's own (one room at a time each): whatever the
    # start would have sent is sent.
    assert await bot_env.bot.slash.publish_all() == 0
    assert [s for s in sent if s[1] == COMMANDS_EVENT] == []
    after = {r: (await published(bot_env, r))["event_id"] for r in rooms}
    assert after == before


async def test_a_dm_follows_its_partners_roles(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    """Membership of a managed room is the MEMBER role: joining one gives the DM the
    members' commands, leaving the last takes them away; nothing else is rewritten."""
    assert bot_env.bot is not None
    bot = bot_env.bot
    user = make_user("slash-joiner")
    client = await make_client(user, auto_join=True)
    dm = await bot.messenger.direct_room_for(UserId(user.user_id))
    first = await published(bot_env, dm)
    assert "help" in names(first["content"]) and "search" not in names(first["content"])
    nato = await published(bot_env, bot_env.room_id("nato-s"))
    await enrol(bot_env, [(user.user_id, "NATO SECRET", "POL")])
    await bot.commands.invite(
        UserId(bot_env.admin.user_id), UserId(user.user_id), RoomKey("nato-s")
    )
    await client.join(bot_env.room_id("nato-s"))
    await published(bot_env, dm, lambda content: "search" in names(content))
    await client.leave(bot_env.room_id("nato-s"))
    await published(bot_env, dm, lambda content: "search" not in names(content))
    assert (await published(bot_env, bot_env.room_id("nato-s")))["event_id"] == nato["event_id"]


async def test_a_member_cannot_set_the_commands_of_a_managed_room(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    member = make_user("slash-member")
    client = await make_client(member)
    (room,) = await enrol(
        (admin, dm), [(member.user_id, "NATO SECRET", "POL")], [(client, "nato-s")]
    )
    assert bot_env.bot is not None
    levels = await bot_env.bot.client.room_get_state_event(room, "m.room.power_levels")
    assert isinstance(levels, RoomGetStateEventResponse), levels
    assert levels.content["events"][COMMANDS_EVENT] == 100  # only the bot's level reaches it
    before = await commands_event(bot_env, room)
    assert before is not None
    forged = {"sigil": "!", "commands": [{"syntax": "clearance grant {user}", "arguments": []}]}
    for state_key in (member.user_id, ""):
        response = await client.client.room_put_state(room, COMMANDS_EVENT, forged, state_key)
        assert not isinstance(response, RoomPutStateResponse), response
        assert response.status_code == "M_FORBIDDEN", response
    after = await commands_event(bot_env, room)
    assert after is not None and after["event_id"] == before["event_id"]
    assert after["content"] != forged


# -- structured commands -------------------------------------------------------------------


def grant_syntax(env: BotEnv) -> str:
    assert env.bot is not None
    return syntax_of(env.bot.registry.commands["clearance grant"])


async def send_structured(
    client: E2EEClient,
    room_id: str,
    syntax: str,
    arguments: Mapping[str, Any],
    *,
    body: str = "",
    mention: str | None,
) -> str:
    content: dict[str, Any] = {
        "msgtype": "m.text",
        "body": body or f"!{syntax}",
        COMMAND_FIELD: {"syntax": syntax, "arguments": dict(arguments)},
    }
    if mention is not None:
        content["m.mentions"] = {"user_ids": [mention]}
    return await client.send_event(room_id, "m.room.message", content)


async def answer(client: E2EEClient, room_id: str, event_id: str) -> str:
    event = await client.wait_for(room_id, replying_to(event_id), 30)
    assert isinstance(event, RoomMessageNotice)
    body: str = event.body
    return body


async def grant_of(env: BotEnv, user_id: str) -> tuple[str, set[str]] | None:
    assert env.bot is not None
    record = await env.bot.commands.clearance(UserId(user_id))
    return None if record is None else (record.nationality, {g.level for g in record.grants})


async def test_structured_clearance_grant(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    bot_id = bot_env.bot_user.user_id
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_id)
    syntax = grant_syntax(bot_env)
    user = make_user("slash-grantee").user_id
    values = {"user": user, "marking": "NATO SECRET", "nationality": "DEU"}

    # From the admin's trusted device: done, with spaces in a value and no quotes; the body
    # is not what is parsed (it says otherwise here, and has no prefix).
    event = await send_structured(
        admin, dm, syntax, values, body=f"grant {user} NATO CONFIDENTIAL FRA", mention=bot_id
    )
    assert "Clearance updated" in await answer(admin, dm, event)
    assert await grant_of(bot_env, user) == ("DEU", {"NATO SECRET"})
    await in_audit(
        bot_env,
        lambda entries: next(
            (
                e
                for e in entries
                if e.action == "command.structured" and e.detail.get("body_agrees") is False
            ),
            None,
        ),
        "the structured run audited, its body disagreeing",
    )

    # Each bad value is named; nothing changes.
    other = make_user("slash-other").user_id
    bad: list[tuple[str, dict[str, Any], str]] = [
        (syntax, {**values, "user": "not-a-user"}, "argument 'user'"),
        (syntax, {"user": other, "nationality": "DEU"}, "missing argument 'marking'"),
        ("clearance grnt {user}", values, "unknown command syntax"),
    ]
    assert bot_env.bot is not None
    invite = syntax_of(bot_env.bot.registry.commands["invite"])
    bad.append((invite, {"user": other, "room": "nato-x"}, "'nato-x' is not a room key"))
    for bad_syntax, arguments, expected in bad:
        event = await send_structured(admin, dm, bad_syntax, arguments, mention=bot_id)
        reply = await answer(admin, dm, event)
        assert expected in reply, (expected, reply)
    assert await grant_of(bot_env, other) is None

    # Without the mention: for another bot, not this one. A later command's answer proves
    # the bot has handled the earlier message (one room's events in order).
    quiet = await send_structured(admin, dm, syntax, {**values, "user": other}, mention=None)
    later = await admin.send_text(dm, "!whoami")
    await answer(admin, dm, later)
    assert not [e for e in admin.events.get(dm, []) if replying_to(quiet)(e)]
    assert await grant_of(bot_env, other) is None

    # The same from someone who is not an admin: refused, audited as structured.
    officer = await make_client(bot_env.officer)
    officer_dm = await open_dm(officer, bot_id)
    event = await send_structured(
        officer, officer_dm, syntax, {**values, "user": other}, mention=bot_id
    )
    assert "for admins only" in await answer(officer, officer_dm, event)
    assert await grant_of(bot_env, other) is None
    denied = await in_audit(
        bot_env,
        lambda entries: next(
            (
                e
                for e in entries
                if e.action == "command.denied"
                and e.actor == bot_env.officer.user_id
                and e.subject == "clearance grant"
            ),
            None,
        ),
        "the refusal audited",
    )
    assert denied.detail.get("structured") is True


# -- whether the bot may set the event (no homeserver: the power levels as read) -----------


def _levels(**content: Any) -> dict[tuple[str, str], StateEvent]:
    create = StateEvent("m.room.create", "", {"room_version": "10"}, "@partner:hs")
    return {
        ("m.room.create", ""): create,
        ("m.room.power_levels", ""): StateEvent("m.room.power_levels", "", content),
    }


def test_the_bot_writes_only_where_the_power_levels_let_it() -> None:
    bot = "@bot:hs"
    assert not may_set(_levels(users={"@partner:hs": 100}), bot)  # state_default 50
    assert may_set(_levels(users={bot: 100}, state_default=100), bot)
    assert not may_set(_levels(users={bot: 50}, events={COMMANDS_EVENT: 100}), bot)
    assert may_set(_levels(users_default=50), bot)
    assert may_set(_levels(users={bot: "100"}, state_default="100"), bot)  # before v10
    # room version 12: a creator holds unlimited power, listed nowhere
    v12 = _levels(users={})
    v12[("m.room.create", "")] = StateEvent("m.room.create", "", {"room_version": "12"}, bot)
    assert may_set(v12, bot)
    assert not may_set(v12, "@someone:hs")
