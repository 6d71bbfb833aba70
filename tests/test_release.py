"""National release control on a real Synapse with E2EE clients: a route with
`approval = "second-officer"` holds what its officer sends until a second officer releases
it, by command or by a ✅ / ❌ reaction to the bot's notice; the sender, a non-approver, an
approver not cleared for the item and an unsigned device are refused; deny and timeout
tell the sender; an edit re-holds, a redaction withdraws; below `approval_from` an item
goes at once."""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nio import Api, RoomMessageNotice, RoomMessageText, RoomSendResponse

from bot.config import load_config
from bot.devtools.botenv import SECRETS, rooms_config, write_config
from bot.devtools.devserver import DevServer, RegisteredUser
from bot.gate.config import register_entry
from bot.matrix.crosssign import CrossSigningKeys
from bot.storage import HoldState, Store, audit_key_from, in_thread, parse_release_id
from bot.storage.sealing import hold_binding
from tests.bot_harness import (
    BotEnv,
    audited,
    enrol,
    eventually,
    in_audit,
    nothing_arrives,
    open_dm,
    relayed_barrier,
    replying_to,
    stopped,
    talk,
    text_with,
)
from tests.matrix_harness import E2EEClient, MakeClient, MakeUser, clients_on

NOTICE = re.compile(r"Held for release approval: (R\d+)")
# Below approval_from (GEHEIM): relayed at once, so a later copy into the same room proves
# that nothing held went there before it.
LOW_NATO = "VS-VERTRAULICH // REL TO NATO"
LOW_EU = "VS-VERTRAULICH // REL TO EU"


@dataclass
class Cast:
    env: BotEnv
    officer: E2EEClient  # sends: in deu; an officer and an approver
    second: E2EEClient  # the second officer: an approver, in deu
    other: E2EEClient  # cleared for deu, not an approver
    nor: E2EEClient  # an approver (and officer) cleared for NATO SECRET only: in nato-s
    nor_dm: str
    eu: E2EEClient  # AUT, in eu-s
    deu: str
    nato_s: str
    eu_s: str


@pytest.fixture(scope="module")
async def release_env(
    synapse: DevServer, make_user: MakeUser, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[BotEnv, RegisteredUser, RegisteredUser, RegisteredUser]]:
    """A bot whose route deu -> nato-s, eu-s holds GEHEIM and above for a second officer;
    its approvers: the officer, a second officer and a NOR officer (who is not cleared for
    DEU GEHEIM). The approvers' ids are in the config, so the users come first."""
    workdir = tmp_path_factory.mktemp("bot")
    bot_user, admin, officer = make_user("liaison"), make_user("secadmin"), make_user("lo-deu")
    second, other, nor = make_user("lo2-deu"), make_user("desk-deu"), make_user("lo-nor")
    approvers = ", ".join(f'"{u.user_id}"' for u in (officer, second, nor))
    rooms = rooms_config("eu-s", relay_to=("nato-s", "eu-s")) + (
        'approval = "second-officer"\n'
        'approval_from = "GEHEIM"\n'
        f"approvers = [{approvers}]\n"
        'approval_timeout = "4h"\n'
    )
    path = workdir / "config.toml"
    write_config(path, synapse, bot_user, admin.user_id, officer.user_id, rooms)
    # Two officers: the NOR one must be able to open a direct chat with the bot.
    text = path.read_text()
    one = f'officers = ["{officer.user_id}"]'
    assert one in text
    path.write_text(text.replace(one, f'officers = ["{officer.user_id}", "{nor.user_id}"]'))
    synapse.add_register(register_entry(load_config(path)), data_key=SECRETS.data_key)
    env = BotEnv(synapse, workdir, bot_user, admin, officer, path)
    await env.start()
    try:
        yield env, second, other, nor
    finally:
        await env.stop()


@pytest.fixture(scope="module")
async def cast(
    release_env: tuple[BotEnv, RegisteredUser, RegisteredUser, RegisteredUser],
    make_user: MakeUser,
    synapse: DevServer,
    tmp_path_factory: pytest.TempPathFactory,
    identities: dict[str, CrossSigningKeys],
) -> AsyncIterator[Cast]:
    env, second_user, other_user, nor_user = release_env
    async with clients_on(synapse, tmp_path_factory, identities) as make:
        officer = await make(env.officer)
        second, other, nor = await make(second_user), await make(other_user), await make(nor_user)
        eu_user = make_user("eu-aut")
        eu = await make(eu_user)
        deu_grants = [
            (u.user_id, "DEU GEHEIM", "DEU") for u in (env.officer, second_user, other_user)
        ]
        deu, _, _, nato_s, eu_s = await enrol(
            env,
            [
                *deu_grants,
                (nor_user.user_id, "NATO SECRET", "NOR"),
                (eu_user.user_id, "EU SECRET", "AUT"),
            ],
            [
                (officer, "deu"),
                (second, "deu"),
                (other, "deu"),
                (nor, "nato-s"),
                (eu, "eu-s"),
            ],
        )
        nor_dm = await open_dm(nor, env.bot_user.user_id)
        yield Cast(env, officer, second, other, nor, nor_dm, eu, deu, nato_s, eu_s)


async def _hold(cast: Cast, marking: str, words: str) -> tuple[str, str, str, str]:
    """Send a tagged message the route holds: (its event id, the request id, the notice's
    event id, the receipt's text)."""
    mark = cast.officer.event_count(cast.deu)
    event_id = await cast.officer.send_text(cast.deu, f"[{marking}] {words}")
    notice = await cast.officer.wait_for(
        cast.deu,
        lambda e: replying_to(event_id)(e) and NOTICE.search(e.body) is not None,
        60,
        after=mark,
    )
    assert isinstance(notice, RoomMessageNotice)
    receipt = await cast.officer.wait_for(
        cast.deu,
        lambda e: replying_to(event_id)(e) and "held for release approval" in e.body,
        60,
        after=mark,
    )
    found = NOTICE.search(notice.body)
    assert found is not None
    return event_id, found.group(1), notice.event_id, receipt.body


async def _react(client: E2EEClient, room_id: str, event_id: str, key: str) -> str:
    """A reaction encrypted as Element sends one in an encrypted room (nio's room_send
    leaves m.reaction in clear)."""
    c = client.client
    await client.wait_for_room(room_id)
    await c.joined_members(room_id)
    await c.keys_query() if c.should_query_keys else None
    client.trust_room_devices(room_id)
    assert c.olm is not None
    if c.olm.should_share_group_session(room_id):
        await c.share_group_session(room_id, ignore_unverified_devices=True)
    content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
    kind, encrypted = c.encrypt(room_id, "m.reaction", content)
    method, path, data = Api.room_send(c.access_token, room_id, kind, encrypted, uuid.uuid4())
    response = await c._send(RoomSendResponse, method, path, data, (room_id,))
    assert isinstance(response, RoomSendResponse), response
    return str(response.event_id)


def _nato_copy(tag: str) -> Any:
    return lambda e: isinstance(e, RoomMessageText) and tag in e.body


async def test_held_item_is_released_by_a_second_officer_command(cast: Cast) -> None:
    tag = f"convoy-{secrets.token_hex(3)}"
    nato_mark = cast.nor.event_count(cast.nato_s)
    event_id, rid, _, receipt = await _hold(cast, "GEHEIM // REL TO NATO", tag)
    assert f"Not relayed to nato-s: held for release approval ({rid})" in receipt
    assert "Not relayed to eu-s: not releasable to" in receipt  # refused, never held
    bot = cast.env.bot
    assert bot is not None
    assert bot.metrics.registry.get_sample_value("liaison_release_pending") == 1
    # Nothing reaches the NATO room while it is held.
    await nothing_arrives(
        cast.nor,
        cast.nato_s,
        text_with(tag),
        since=nato_mark,
        barrier=relayed_barrier(cast.officer, cast.deu, LOW_NATO),
        what="a copy of a held item",
    )
    listed = await talk(cast.second, cast.deu, "!release pending", "Held for release approval (")
    assert rid in listed.body and "waiting" in listed.body and "nato-s" in listed.body
    # The sender's own approval and a non-approver's are refused, and audited.
    own = await talk(cast.officer, cast.deu, f"!release approve {rid}", "Not decided")
    assert "the sender may not release their own item" in own.body
    await in_audit(
        cast.env,
        lambda es: any(
            e.action == "release.refused" and e.detail["reason_code"] == "release.own_item"
            for e in es
        ),
        "the sender's own approval refused",
    )
    other = await talk(cast.other, cast.deu, f"!release approve {rid}", "Not decided")
    assert "is not an approver" in other.body
    await in_audit(
        cast.env,
        lambda es: any(
            e.action == "release.refused" and e.detail["reason_code"] == "release.not_approver"
            for e in es
        ),
        "a non-approver's approval refused",
    )
    # An approver not cleared for the item (NATO SECRET, NOR), from their direct chat.
    uncleared = await talk(cast.nor, cast.nor_dm, f"!release approve {rid}", "Not decided")
    assert "you are not cleared for this item" in uncleared.body
    assert "GEHEIM" not in uncleared.body and "nato-s" not in uncleared.body
    await in_audit(
        cast.env,
        lambda es: any(
            e.action == "release.refused" and e.detail["reason_code"] == "release.not_cleared"
            for e in es
        ),
        "an uncleared approver's approval refused",
    )
    await nothing_arrives(
        cast.nor,
        cast.nato_s,
        text_with(tag),
        since=nato_mark,
        barrier=relayed_barrier(cast.officer, cast.deu, LOW_NATO),
        what="a copy released by a refused approval",
    )
    approved = await talk(cast.second, cast.deu, f"!release approve {rid}", "approved")
    assert "Relayed to nato-s as NATO SECRET" in approved.body
    copy = await cast.nor.wait_for(cast.nato_s, _nato_copy(tag), 60, after=nato_mark)
    assert copy.body.splitlines()[0] == "NATO SECRET — originator: DEU GEHEIM // REL TO NATO"
    entry = await audited(cast.env, "release.approved", event_id)
    assert entry.actor == cast.second.user_id and entry.detail["targets"] == ["nato-s"]
    assert bot.metrics.registry.get_sample_value("liaison_release_pending") == 0
    decided = bot.metrics.registry.get_sample_value("liaison_release_decision_seconds_count")
    assert decided is not None and decided >= 1
    # Approved again: already decided, and still one copy.
    again = await talk(cast.second, cast.deu, f"!release approve {rid}", "Not decided")
    assert "already decided" in again.body
    await nothing_arrives(
        cast.nor,
        cast.nato_s,
        _nato_copy(tag),
        since=nato_mark,
        already=1,
        barrier=relayed_barrier(cast.officer, cast.deu, LOW_NATO),
        what="a second copy",
    )


async def test_a_reaction_releases_and_an_unsigned_device_is_refused(
    cast: Cast, make_client: MakeClient
) -> None:
    tag = f"bridge-{secrets.token_hex(3)}"
    nato_mark = cast.nor.event_count(cast.nato_s)
    event_id, rid, notice_id, _ = await _hold(cast, "GEHEIM // REL TO NATO", tag)
    # The second officer's device that its owner never signed: refused, audited. (Its key
    # differs from the trusted device's reaction below: the homeserver keeps one annotation
    # per user and key.)
    unsigned = await make_client(cast.second.user, cross_signed=False)
    await unsigned.wait_for_room(cast.deu)
    mark = cast.officer.event_count(cast.deu)
    await _react(unsigned, cast.deu, notice_id, "❌")  # a denial from it would count too
    refused = await cast.officer.wait_for(
        cast.deu, lambda e: replying_to(notice_id)(e) and "Not decided" in e.body, 60, after=mark
    )
    assert "not verified by its owner" in refused.body
    await in_audit(
        cast.env,
        lambda es: any(
            e.action == "release.refused" and e.detail["reason_code"] == "release.untrusted_device"
            for e in es
        ),
        "the unsigned device's approval refused",
    )
    # A reaction that is no decision (another key) does nothing.
    await _react(cast.second, cast.deu, notice_id, "👍")
    await _react(cast.second, cast.deu, notice_id, "✅")
    approved = await cast.officer.wait_for(
        cast.deu, lambda e: replying_to(notice_id)(e) and "approved" in e.body, 60, after=mark
    )
    assert "Relayed to nato-s as NATO SECRET" in approved.body
    await cast.nor.wait_for(cast.nato_s, _nato_copy(tag), 60, after=nato_mark)
    await audited(cast.env, "release.approved", event_id)
    await nothing_arrives(
        cast.nor,
        cast.nato_s,
        _nato_copy(tag),
        since=nato_mark,
        already=1,
        barrier=relayed_barrier(cast.officer, cast.deu, LOW_NATO),
        what="a second copy",
    )
    assert rid


async def test_a_malformed_reaction_is_audited_and_skipped(cast: Cast) -> None:
    _, rid, notice_id, _ = await _hold(cast, "GEHEIM // REL TO NATO", "malformed-reaction")
    c = cast.second.client
    # A key far longer than any emoji: nio takes it as a reaction, the bot's schema not.
    bad = {"m.relates_to": {"rel_type": "m.annotation", "event_id": notice_id, "key": "✅" * 80}}
    response = await c.room_send(cast.deu, "m.reaction", bad)  # nio sends it in clear
    assert isinstance(response, RoomSendResponse), response
    entry = await audited(cast.env, "event.malformed", response.event_id)
    assert "key" in entry.detail["problem"]
    # The bot goes on: the item is still held and can be decided.
    denied = await talk(cast.second, cast.deu, f'!release deny {rid} "not now"', "denied")
    assert rid in denied.body


async def test_deny_tells_the_sender_the_reason_and_never_audits_it(cast: Cast) -> None:
    reason = f"source protection {secrets.token_hex(2)}"
    event_id, rid, _, _ = await _hold(cast, "GEHEIM // REL TO NATO", "deny-me")
    mark = cast.officer.event_count(cast.deu)
    await talk(cast.second, cast.deu, f'!release deny {rid} "{reason}"', "denied")
    told = await cast.officer.wait_for(
        cast.deu, lambda e: replying_to(event_id)(e) and "was denied" in e.body, 60, after=mark
    )
    assert f"Reason given: {reason}" in told.body
    entry = await audited(cast.env, "release.denied", event_id)
    assert entry.detail["reason_length"] == len(reason)
    assert reason not in repr(entry.detail)
    bot = cast.env.bot
    assert bot is not None and bot.store is not None
    request = await in_thread(bot.store.release_request, parse_release_id(rid) or 0)
    assert request is not None and request.targets[0].state is HoldState.DENIED
    assert reason not in (request.targets[0].reason or "")  # sealed


async def test_partial_approval_relays_to_the_approved_target_only(cast: Cast) -> None:
    tag = f"partial-{secrets.token_hex(3)}"
    nato_mark, eu_mark = cast.nor.event_count(cast.nato_s), cast.eu.event_count(cast.eu_s)
    _, rid, _, receipt = await _hold(cast, "GEHEIM // REL TO NATO, EU", tag)
    assert f"nato-s: held for release approval ({rid})" in receipt
    assert f"eu-s: held for release approval ({rid})" in receipt
    typo = f"nato-{secrets.token_hex(2)}"
    wrong = await talk(cast.second, cast.deu, f"!release approve {rid} {typo}", "Not decided")
    assert f"{typo} is not held for {rid} (held: eu-s, nato-s)" in wrong.body
    refusal = await in_audit(
        cast.env,
        lambda es: next(
            (
                e
                for e in es
                if e.action == "release.refused"
                and e.detail["reason_code"] == "release.unknown_target"
            ),
            None,
        ),
        "the unknown target refused",
    )
    assert typo not in repr(refusal.detail)  # what was typed stays out of the audit log
    approved = await talk(cast.second, cast.deu, f"!release approve {rid} nato-s", "approved")
    assert "Relayed to nato-s" in approved.body and "Still held for eu-s" in approved.body
    await cast.nor.wait_for(cast.nato_s, _nato_copy(tag), 60, after=nato_mark)
    await nothing_arrives(
        cast.eu,
        cast.eu_s,
        text_with(tag),
        since=eu_mark,
        barrier=relayed_barrier(cast.officer, cast.deu, LOW_EU),
        what="a copy in the target not approved",
    )
    await talk(cast.second, cast.deu, f'!release deny {rid} "not for the EU"', "denied")


async def test_below_approval_from_an_item_goes_at_once(cast: Cast) -> None:
    tag = f"low-{secrets.token_hex(3)}"
    nato_mark = cast.nor.event_count(cast.nato_s)
    receipt = await talk(cast.officer, cast.deu, f"[{LOW_NATO}] {tag}", "Relayed to nato-s")
    assert "held" not in receipt.body and "as NATO CONFIDENTIAL" in receipt.body
    await cast.nor.wait_for(cast.nato_s, _nato_copy(tag), 60, after=nato_mark)


async def test_an_edit_holds_again_and_the_edit_is_released(cast: Cast) -> None:
    tag = f"edited-{secrets.token_hex(3)}"
    nato_mark = cast.nor.event_count(cast.nato_s)
    event_id, rid, _, _ = await _hold(cast, "GEHEIM // REL TO NATO", "first words")
    await talk(cast.second, cast.deu, f'!release deny {rid} "rephrase it"', "denied")
    mark = cast.officer.event_count(cast.deu)
    body = f"[GEHEIM // REL TO NATO] {tag}"
    edit_id = await cast.officer.send_event(
        cast.deu,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": f"* {body}",
            "m.new_content": {"msgtype": "m.text", "body": body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
        },
    )
    reply = await cast.officer.wait_for(cast.deu, replying_to(edit_id), 60, after=mark)
    assert f"Held again for release approval ({rid})" in reply.body
    await cast.officer.wait_for(
        cast.deu, text_with(f"Edited, held again for release approval: {rid}"), 60, after=mark
    )
    await audited(cast.env, "release.reheld", event_id)
    await talk(cast.second, cast.deu, f"!release approve {rid}", "approved")
    copy = await cast.nor.wait_for(cast.nato_s, _nato_copy(tag), 60, after=nato_mark)
    assert "first words" not in copy.body


async def test_an_edit_of_a_released_item_is_not_relayed_without_approval(cast: Cast) -> None:
    """The copy keeps the text a second officer released; the sender hears why."""
    tag = f"after-{secrets.token_hex(3)}"
    nato_mark = cast.nor.event_count(cast.nato_s)
    event_id, rid, _, _ = await _hold(cast, "GEHEIM // REL TO NATO", "approved words")
    await talk(cast.second, cast.deu, f"!release approve {rid}", "approved")
    await cast.nor.wait_for(cast.nato_s, _nato_copy("approved words"), 60, after=nato_mark)
    mark = cast.officer.event_count(cast.deu)
    body = f"[GEHEIM // REL TO NATO] {tag}"
    edit_id = await cast.officer.send_event(
        cast.deu,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": f"* {body}",
            "m.new_content": {"msgtype": "m.text", "body": body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
        },
    )
    reply = await cast.officer.wait_for(cast.deu, replying_to(edit_id), 60, after=mark)
    assert "Edit not relayed to nato-s: it would need release approval again" in reply.body
    await nothing_arrives(
        cast.nor,
        cast.nato_s,
        text_with(tag),
        since=nato_mark,
        barrier=relayed_barrier(cast.officer, cast.deu, LOW_NATO),
        what="an unapproved edit of a released copy",
    )


async def test_a_redaction_withdraws_a_held_item(cast: Cast) -> None:
    tag = f"withdrawn-{secrets.token_hex(3)}"
    nato_mark = cast.nor.event_count(cast.nato_s)
    event_id, rid, _, _ = await _hold(cast, "GEHEIM // REL TO NATO", tag)
    await cast.officer.client.room_redact(cast.deu, event_id)
    await audited(cast.env, "release.withdrawn", event_id)
    late = await talk(cast.second, cast.deu, f"!release approve {rid}", "Not decided")
    assert "already decided" in late.body
    await nothing_arrives(
        cast.nor,
        cast.nato_s,
        text_with(tag),
        since=nato_mark,
        barrier=relayed_barrier(cast.officer, cast.deu, LOW_NATO),
        what="a copy of a withdrawn item",
    )


async def test_a_held_item_expires_and_the_sender_is_told(cast: Cast) -> None:
    tag = f"expiring-{secrets.token_hex(3)}"
    nato_mark = cast.nor.event_count(cast.nato_s)
    event_id, rid, _, _ = await _hold(cast, "GEHEIM // REL TO NATO", tag)
    bot = cast.env.bot
    assert bot is not None
    mark = cast.officer.event_count(cast.deu)
    # The sweep runs this every few seconds with the time now; four hours on, it is due.
    expired = await bot.release.expire_due(datetime.now(UTC) + timedelta(hours=4, minutes=1))
    assert rid in expired
    told = await cast.officer.wait_for(
        cast.deu, lambda e: replying_to(event_id)(e) and "expired" in e.body, 60, after=mark
    )
    assert f"{rid} expired" in told.body
    await audited(cast.env, "release.expired", event_id)
    late = await talk(cast.second, cast.deu, f"!release approve {rid}", "Not decided")
    assert "already decided" in late.body
    await nothing_arrives(
        cast.nor,
        cast.nato_s,
        text_with(tag),
        since=nato_mark,
        barrier=relayed_barrier(cast.officer, cast.deu, LOW_NATO),
        what="a copy of an expired item",
    )
    await eventually(
        lambda: bot.metrics.registry.get_sample_value("liaison_release_pending") == 0,
        what="nothing pending",
    )


async def test_an_approval_that_a_crash_left_unsent_goes_out_once_at_the_start(
    cast: Cast,
) -> None:
    """Approval and the ledger row are one transaction: what was approved but not sent when
    the bot stopped is sent by the next start (the relay's pending rows), once."""
    tag = f"crash-{secrets.token_hex(3)}"
    nato_mark = cast.nor.event_count(cast.nato_s)
    event_id, rid, _, _ = await _hold(cast, "GEHEIM // REL TO NATO", tag)
    bot = cast.env.bot
    assert bot is not None
    request = await in_thread(bot.store.release_request, parse_release_id(rid) or 0)
    assert request is not None
    held = request.targets[0]
    # What the desk's approval writes, without the send that follows it.
    content = json.loads(
        bot.release.copies.open_text(
            held.content, hold_binding(event_id, held.target_key, held.target_room_id)
        )
    )
    entry = bot.relay.copy_entry(event_id, bot.rooms.by_key[held.target_key], content)
    async with stopped(cast.env):
        store = Store.from_url(cast.env.config.database_url())
        store.audit_key = audit_key_from(SECRETS.data_key)
        try:
            store.approve_release(request.id, [entry], cast.second.user_id)
        finally:
            store.close()
    copy = await cast.nor.wait_for(cast.nato_s, _nato_copy(tag), 60, after=nato_mark)
    assert copy.body.splitlines()[0] == "NATO SECRET — originator: DEU GEHEIM // REL TO NATO"
    await nothing_arrives(
        cast.nor,
        cast.nato_s,
        _nato_copy(tag),
        since=nato_mark,
        already=1,
        barrier=relayed_barrier(cast.officer, cast.deu, LOW_NATO),
        what="a second copy after the start",
    )
