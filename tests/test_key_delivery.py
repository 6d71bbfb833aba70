"""Every entitled device reads what the bot sends, every time (issue: no "unable to decrypt").

Against the real Synapse, with clients that never ask for keys (so the bot's own sharing is
what is tested), back-to-back trials of the two moments that used to fail: a member who has
just joined and the bot posting at once, and a reply in a DM the bot has just opened. Then
the key-request path: a device that missed a key asks the bot and gets it, from the first
message its owner may read; an uncleared user and an unsigned device get nothing.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any
from unittest import mock

import pytest
from nio import MegolmEvent, RoomGetStateResponse
from nio.exceptions import EncryptionError

from bot.devtools.e2ee_client import E2EEClient
from bot.matrix.gateway import MatrixError
from commands.context import Role
from commands.document import doc
from policy.ids import RoomKey, UserId
from tests.bot_harness import ROOMS, BotEnv, enrol, eventually, in_audit, talk
from tests.matrix_harness import MakeClient, MakeUser

TRIALS = 21  # seven each of a relayed copy, a feed item and a digest
DM_TRIALS = 20
BOT_FEED_TOKENS = {"sat": "sat-token-kd"}
# The harness's two rooms and route, with a digest schedule and a feed into nato-s.
BOT_ROOMS = (
    ROOMS
    + """
[[digests]]
room = "nato-s"
cron = "0 6 * * *"
window = "24h"
sources = ["nato-s"]

[ingest]
bind = "127.0.0.1:0"

[[ingest.feeds]]
key = "sat"
room = "nato-s"
token_env = "LIAISON_FEED_SAT"
"""
)


def post_feed(env: BotEnv, text: str) -> int:
    """Post to the bot's feed sat (on the port its bind's port 0 got); the status."""
    assert env.bot is not None and env.bot.feeds is not None
    port = env.bot.feeds.port
    import json
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/feeds/sat",
        data=json.dumps({"marking": "NATO SECRET", "text": text}).encode(),
        method="POST",
    )
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", "Bearer sat-token-kd")
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


def no_undecryptable_from_bot(client: E2EEClient, room_id: str, bot_user: str) -> None:
    left = [e for e in client.undecryptable(room_id) if e.sender == bot_user]
    assert not left, client.summary(room_id)


async def test_a_member_who_just_joined_reads_what_the_bot_posts_at_once(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    bot = bot_env.bot
    assert bot is not None
    officer = await make_client(bot_env.officer)
    (deu,) = await enrol(
        bot_env, [(bot_env.officer.user_id, "DEU GEHEIM", "DEU")], [(officer, "deu")]
    )
    nato_s = bot_env.room_id("nato-s")
    kinds = ("relay", "feed", "digest")
    for trial in range(TRIALS):
        kind = kinds[trial % len(kinds)]
        member = await make_client(make_user(f"joiner{trial}"))
        assert await enrol(
            bot_env, [(member.user_id, "NATO SECRET", "NOR")], [(member, "nato-s")], at_once=True
        ) == [nato_s]
        phrase = f"{kind}-{trial}-{secrets.token_hex(3)}"
        # The bot posts the moment the join is done, before its own sync may show it.
        if kind == "relay":
            await officer.send_text(deu, f"[GEHEIM // REL TO NATO] {phrase}")
        elif kind == "feed":
            assert await asyncio.to_thread(post_feed, bot_env, phrase) == 202
        else:
            phrase = "Situation digest"
            await bot.commands.digest_now(
                UserId(bot_env.admin.user_id), RoomKey("nato-s"), frozenset({Role.ADMIN})
            )
        await member.wait_for_text(nato_s, phrase)
        no_undecryptable_from_bot(member, nato_s, bot_env.bot_user.user_id)
        await member.stop()


async def test_an_answer_in_a_new_dm_is_read_by_its_partner(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    bot_user = bot_env.bot_user.user_id
    for trial in range(DM_TRIALS):
        member = await make_client(make_user(f"asker{trial}"))
        (nato_s,) = await enrol(
            bot_env, [(member.user_id, "NATO SECRET", "NOR")], [(member, "nato-s")], at_once=True
        )
        await talk(member, nato_s, "!whoami", "Answered in your direct messages")
        dm = nato_s
        while dm == nato_s:  # the room's own invite may show up in a sync after the join
            dm = await member.wait_for_invite(inviter=bot_user)
        await member.join(dm)
        answer = await member.wait_for_text(dm, "nationality NOR")
        assert "grants: NATO SECRET" in answer.body
        no_undecryptable_from_bot(member, dm, bot_user)
        if trial == 0:
            state = await member.client.room_get_state(dm)
            assert isinstance(state, RoomGetStateResponse)
            content = {e["type"]: e["content"] for e in state.events if e["state_key"] == ""}
            assert content["m.room.encryption"]["algorithm"] == "m.megolm.v1.aes-sha2"
            assert content["m.room.history_visibility"]["history_visibility"] == "joined"
            assert content["m.room.guest_access"]["guest_access"] == "forbidden"
        await member.stop()


def key_requests(bot_env: BotEnv, outcome: str) -> float:
    assert bot_env.bot is not None
    value = bot_env.bot.metrics.registry.get_sample_value(
        "liaison_room_key_requests_total", {"outcome": outcome}
    )
    return value or 0.0


async def test_key_requests_answered_for_entitled_devices_only(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    bot = bot_env.bot
    assert bot is not None and bot.client is not None
    bot_user, bot_device = bot_env.bot_user.user_id, str(bot.client.device_id)
    nato_s = bot_env.room_id("nato-s")
    person = make_user("reader")
    first = await make_client(person)
    await enrol(bot_env, [(person.user_id, "NATO SECRET", "NOR")])
    invited = await bot.commands.invite(
        UserId(bot_env.admin.user_id), UserId(person.user_id), RoomKey("nato-s")
    )
    assert invited.invited
    # Once the bot's sync shows the invite (which starts a new session), one message goes out
    # before the join and one right after: the same session, which the member may read from
    # the second message on only.
    await eventually(
        lambda: person.user_id in bot.client.rooms[nato_s].invited_users, what="invite synced"
    )
    before = f"before-{secrets.token_hex(3)}"
    before_id = await bot.messenger.send_notice(nato_s, doc(before))
    await first.join(await first.wait_for_invite())
    after = f"after-{secrets.token_hex(3)}"
    after_id = await bot.messenger.send_notice(nato_s, doc(after))
    seen = await first.wait_for_text(nato_s, after)
    assert seen.event_id == after_id
    sealed_before = MegolmEvent.from_dict(await raw_event(bot_env, nato_s, before_id))
    sent = bot.gateway.sent_with(nato_s, sealed_before.session_id)
    assert [s.event_id for s in sent][-2:] == [before_id, after_id], "one session for both"
    after_index = sent[-1].index

    # A second device of the member, added after the key went out, cannot read it ...
    second = await make_client(person)
    sealed = await second.wait_for(nato_s, lambda e: getattr(e, "event_id", None) == after_id)
    assert isinstance(sealed, MegolmEvent), second.summary(nato_s)
    answered = key_requests(bot_env, "answered")
    # ... until it asks the bot, which forwards the session from the member's first message.
    await second.request_key_from(sealed, bot_user, bot_device)
    await second.wait_for_text(nato_s, after)
    assert key_requests(bot_env, "answered") == answered + 1
    inbound = second.client.olm.inbound_group_store.get(
        nato_s, sealed.sender_key, sealed.session_id
    )
    assert inbound is not None and inbound.first_known_index == after_index
    sealed_before.room_id = nato_s
    with pytest.raises(EncryptionError):
        second.client.decrypt_event(sealed_before)  # from before the join: never opened

    # An uncleared user and an unsigned device of the member ask for the same key: ignored.
    stranger = await make_client(make_user("stranger"))
    unsigned = await make_client(person, cross_signed=False)
    ignored = key_requests(bot_env, "ignored")
    for client in (stranger, unsigned):
        await client.request_key_from(sealed, bot_user, bot_device)
    await eventually(lambda: key_requests(bot_env, "ignored") >= ignored + 2, what="ignored")
    assert key_requests(bot_env, "answered") == answered + 1

    def ignored_both(entries: list[Any]) -> dict[str, str] | None:
        found = {
            e.subject: e.detail["reason"] for e in entries if e.action == "key-request.ignored"
        }
        return found if {stranger.user_id, person.user_id} <= found.keys() else None

    reasons = await in_audit(bot_env, ignored_both, "both requests audited", limit=20)
    assert "no clearance on record" in reasons[stranger.user_id]
    assert "device policy does not trust" in reasons[person.user_id]
    for client in (stranger, unsigned):
        olm = client.client.olm
        assert olm is not None
        assert olm.inbound_group_store.get(nato_s, sealed.sender_key, sealed.session_id) is None


async def raw_event(bot_env: BotEnv, room_id: str, event_id: str) -> dict[str, Any]:
    """The event as the server holds it (nio may hand back a decrypted copy)."""
    assert bot_env.bot is not None and bot_env.bot.client is not None
    client = bot_env.bot.client
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{bot_env.server.base_url}/_matrix/client/v3/rooms/{room_id}/event/{event_id}",
            headers={"Authorization": f"Bearer {client.access_token}"},
        ) as response,
    ):
        assert response.status == 200
        return {**(await response.json()), "room_id": room_id}


async def test_a_join_the_bot_has_not_synced_yet_still_gets_the_key(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    """The bot's sync held back (a slow sync under load, made certain here): the member
    invited and joined meanwhile is known only to the server, and must still get the key."""
    bot = bot_env.bot
    assert bot is not None and bot.client is not None
    nato_s = bot_env.room_id("nato-s")
    member = await make_client(make_user("unseen"))
    client, real_sync = bot.client, bot.client.sync
    gate, parked = asyncio.Event(), asyncio.Event()

    async def held_sync(*args: object, **kwargs: object) -> object:
        parked.set()
        await gate.wait()
        return await real_sync(*args, **kwargs)

    client.sync = held_sync
    try:
        await bot.messenger.send_notice(
            nato_s, doc("wake the long poll")
        )  # its sync returns, then waits
        await asyncio.wait_for(parked.wait(), 30)
        await enrol(
            bot_env, [(member.user_id, "NATO SECRET", "NOR")], [(member, "nato-s")], at_once=True
        )
        assert member.user_id not in client.rooms[nato_s].users  # the bot has not seen it
        phrase = f"unseen-{secrets.token_hex(3)}"
        assert await asyncio.to_thread(post_feed, bot_env, phrase) == 202
    finally:
        client.sync = real_sync
        gate.set()
    await member.wait_for_text(nato_s, phrase)
    no_undecryptable_from_bot(member, nato_s, bot_env.bot_user.user_id)


async def test_a_key_share_that_fails_halfway_leaves_no_key_to_reuse(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    """A share that fails part-way (a network error, a device nobody judged) may have reached
    some devices: that key is dropped, never finished later nor used, and the next send
    makes a new one that every member reads."""
    bot = bot_env.bot
    assert bot is not None and bot.client is not None and bot.gateway is not None
    olm, gateway = bot.client.olm, bot.gateway
    assert olm is not None
    nato_s = bot_env.room_id("nato-s")
    member = await make_client(make_user("halfway"))
    await enrol(
        bot_env, [(member.user_id, "NATO SECRET", "NOR")], [(member, "nato-s")], at_once=True
    )
    await member.wait_for_room(nato_s)
    real_share = gateway._share

    async def fails_after_sharing(room: object, targets: list[str]) -> None:
        await real_share(room, targets)
        raise MatrixError("share room key", None, "injected failure", None)

    olm.outbound_group_sessions.pop(nato_s, None)  # the next send must share a new key
    with (
        mock.patch.object(gateway, "_share", fails_after_sharing),
        pytest.raises(MatrixError, match="injected failure"),
    ):
        await bot.messenger.send_notice(nato_s, doc("never sent"))
    assert nato_s not in olm.outbound_group_sessions
    phrase = f"after-failure-{secrets.token_hex(3)}"
    await bot.messenger.send_notice(nato_s, doc(phrase))
    await member.wait_for_text(nato_s, phrase)
    no_undecryptable_from_bot(member, nato_s, bot_env.bot_user.user_id)
