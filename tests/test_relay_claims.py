"""README claims of the relay that no test held to (issue 31), on a real Synapse with E2EE
clients: the EXERCISE banner on relayed copies, an edit that re-marks an item above its
room handled as spillage end to end, and receipts kept apart per sending device."""

from __future__ import annotations

import functools
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from nio import Event, MegolmEvent, RedactedEvent, RoomMessageNotice, RoomMessageText

from bot.devtools.devserver import DevServer
from bot.matrix.crosssign import CrossSigningKeys
from bot.services.render import EXERCISE_LINE
from tests.bot_harness import (
    BotEnv,
    audited,
    enrol,
    eventually,
    nothing_arrives,
    open_dm,
    posted_barrier,
    relayed_barrier,
    replying_to,
    text_with,
)
from tests.matrix_harness import E2EEClient, MakeClient, MakeUser, clients_on


@dataclass
class Cast:
    admin: E2EEClient
    dm: str
    officer: E2EEClient  # in deu and nato-s
    nato: E2EEClient  # a NATO SECRET member of nato-s (NOR)
    deu: str
    nato_s: str


@pytest.fixture(scope="module")
async def cast(
    bot_env: BotEnv,
    make_user: MakeUser,
    synapse: DevServer,
    tmp_path_factory: pytest.TempPathFactory,
    identities: dict[str, CrossSigningKeys],
) -> AsyncIterator[Cast]:
    async with clients_on(synapse, tmp_path_factory, identities) as make:
        admin = await make(bot_env.admin)
        dm = await open_dm(admin, bot_env.bot_user.user_id)
        officer = await make(bot_env.officer)
        nato_user = make_user("nato-nor")
        nato = await make(nato_user)
        deu, nato_s, _ = await enrol(
            bot_env,
            [
                (bot_env.officer.user_id, "DEU GEHEIM", "DEU"),
                (bot_env.officer.user_id, "NATO SECRET", "DEU"),
                (nato_user.user_id, "NATO SECRET", "NOR"),
            ],
            [(officer, "deu"), (officer, "nato-s"), (nato, "nato-s")],
        )
        yield Cast(admin, dm, officer, nato, deu, nato_s)


async def _redacted(client: E2EEClient, room_id: str, event_id: str) -> bool:
    """The server now holds the event redacted."""
    response = await client.client.room_get_event(room_id, event_id)
    event = getattr(response, "event", None)
    return isinstance(event, RedactedEvent) or getattr(event, "source", {}).get("content") == {}


@pytest.mark.parametrize("tags", ["[EXERCISE] [PRIORITY]", "[PRIORITY] [EXERCISE]"])
async def test_a_copy_of_exercise_traffic_carries_the_banner_above_and_below(
    bot_env: BotEnv, cast: Cast, tags: str
) -> None:
    """README, Task-force rooms and exercise traffic: `[EXERCISE]` before or after the
    precedence; every copy carries `EXERCISE EXERCISE EXERCISE` above and below."""
    tag = f"drill-{secrets.token_hex(3)}"
    mark = cast.nato.event_count(cast.nato_s)
    await cast.officer.send_text(cast.deu, f"[GEHEIM // REL TO NATO] {tags} {tag}")
    copy = await cast.nato.wait_for_text(cast.nato_s, tag, 60, after=mark)
    assert isinstance(copy, RoomMessageText)
    lines = copy.body.splitlines()
    assert lines[0] == lines[-1] == EXERCISE_LINE == "EXERCISE EXERCISE EXERCISE", lines
    assert lines[1] == lines[-2] == "NATO SECRET — originator: DEU GEHEIM // REL TO NATO"
    assert lines[2] == f"[PRIORITY] {tag}"
    assert sum(EXERCISE_LINE in line for line in lines) == 2
    # What clients show (the formatted body) carries it too, above and below.
    html = copy.source["content"]["formatted_body"]
    assert html.count(EXERCISE_LINE) == 2
    assert html.index(EXERCISE_LINE) < html.index(tag) < html.rindex(EXERCISE_LINE)
    assert copy.source["content"]["io.github.liaison_bot.relay"]["exercise"] is True


async def test_an_edit_that_marks_an_item_above_its_room_is_spillage(
    bot_env: BotEnv, cast: Cast
) -> None:
    """README: an edit that no longer fits its own room is spillage; Security model: it
    removes the edit and the original, withdraws every relayed copy and takes the item out
    of search and digests; the admins are alerted with the marking, never the text."""
    assert bot_env.store is not None
    secret = f"plan-{secrets.token_hex(4)}"
    receipt = await _tagged(cast.officer, cast.deu, "[GEHEIM // REL TO NATO] convoy at dawn")
    source_id = _replied_to(receipt)
    copy = await cast.nato.wait_for_text(cast.nato_s, "convoy at dawn", 60)
    nato_mark, dm_mark = cast.nato.event_count(cast.nato_s), cast.admin.event_count(cast.dm)
    edit_id = await cast.officer.send_event(
        cast.deu,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": f"* [STRENG GEHEIM] convoy at dawn, {secret}",
            "m.new_content": {
                "msgtype": "m.text",
                "body": f"[STRENG GEHEIM] convoy at dawn, {secret}",
            },
            "m.relates_to": {"rel_type": "m.replace", "event_id": source_id},
        },
    )
    told = await cast.officer.wait_for(cast.deu, replying_to(edit_id), 60)
    assert isinstance(told, RoomMessageNotice), told
    assert "Your edited message was removed from this room" in told.body, told.body
    assert secret not in told.body and "copies were withdrawn" in told.body
    for event_id in (edit_id, source_id):  # the edit and the original, in deu
        await eventually(
            functools.partial(_redacted, cast.officer, cast.deu, event_id),
            what=f"{event_id} redacted",
        )
    await eventually(
        lambda: _redacted(cast.nato, cast.nato_s, copy.event_id), what="the copy withdrawn"
    )
    alert = await cast.admin.wait_for_text(cast.dm, "Spillage in deu", 60, after=dm_mark)
    assert "STRENG GEHEIM" in alert.body and source_id in alert.body
    assert "withdrawn from nato-s" in alert.body
    assert secret not in alert.body and "convoy" not in alert.body
    entry = await audited(bot_env, "spillage", source_id)
    assert entry.detail["marking"] == "DEU STRENG GEHEIM", entry.detail
    assert entry.detail["withdrawn_from"] == ["nato-s"]
    assert sorted(entry.detail["redacted"]) == sorted([edit_id, source_id])
    assert secret not in str(entry.detail)
    item = bot_env.store.item(source_id)
    assert item is not None and item.redacted_at is not None  # out of search and digests
    # The re-marked text never went to NATO, as an edit of the copy or otherwise.
    await nothing_arrives(
        cast.nato,
        cast.nato_s,
        text_with(secret),
        since=nato_mark,
        barrier=relayed_barrier(cast.officer, cast.deu, "GEHEIM // REL TO NATO"),
        what="the re-marked text in nato-s",
    )


async def test_receipts_are_kept_per_sending_device(
    bot_env: BotEnv, cast: Cast, make_client: MakeClient
) -> None:
    """README, Receipts in a burst: messages from different devices get separate receipts,
    so a device the policy excludes (told why it was refused) learns nothing of what the
    person's other devices sent. Both messages come in one sync batch (sent while the bot is
    down), where one receipt per person would have merged them."""
    unsigned = await make_client(cast.officer.user, cross_signed=False)
    await unsigned.wait_for_room(cast.deu)
    # Its first message: the bot now holds its session, so the next one decrypts in the
    # same batch as the trusted device's.
    await _tagged(unsigned, cast.deu, "[GEHEIM // REL TO NATO] first from the new device")
    tag = secrets.token_hex(3)
    await bot_env.stop()
    trusted_id = await cast.officer.send_text(cast.deu, f"[GEHEIM // REL TO NATO] sent-{tag}")
    unsigned_id = await unsigned.send_text(cast.deu, f"[GEHEIM // REL TO NATO] stolen-{tag}")
    bot = await bot_env.start()
    told = await unsigned.wait_for(cast.deu, replying_to(unsigned_id), 60)
    assert isinstance(told, RoomMessageNotice), told  # readable by the refused device
    assert "not verified by its owner" in told.body
    for leak in (trusted_id, "Relayed", "Receipt for your", f"sent-{tag}"):
        assert leak not in told.body, (leak, told.body)
    mine = await cast.officer.wait_for(cast.deu, replying_to(trusted_id), 60)
    assert isinstance(mine, RoomMessageNotice)
    assert "Relayed to nato-s as NATO SECRET" in mine.body and unsigned_id not in mine.body
    # The trusted device's receipt stays unreadable to the excluded one.
    seen = await unsigned.wait_for(cast.deu, lambda e: e.event_id == mine.event_id, 30)
    assert isinstance(seen, MegolmEvent), seen
    index = unsigned.events[cast.deu].index(seen)
    await nothing_arrives(
        unsigned,
        cast.deu,
        lambda e: e.event_id == mine.event_id and not isinstance(e, MegolmEvent),
        since=index,
        barrier=posted_barrier(bot, cast.deu),
        readable=False,
        settle=True,
        what="the trusted device's receipt, readable on the excluded device",
    )


async def _tagged(client: E2EEClient, room_id: str, body: str) -> RoomMessageNotice:
    """Send a tagged message; the bot's answer to it."""
    event_id = await client.send_text(room_id, body)
    answer: Event = await client.wait_for(room_id, replying_to(event_id), 60)
    assert isinstance(answer, RoomMessageNotice), answer
    return answer


def _replied_to(answer: RoomMessageNotice) -> str:
    event_id: str = answer.source["content"]["m.relates_to"]["m.in_reply_to"]["event_id"]
    return event_id
