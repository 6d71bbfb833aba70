"""Issue 24 on a real Synapse: one malformed event from any member never stops the bot
(finding 1), no member can steer its redaction power through an edit (finding 2), an edit
that re-marks an item above its room withdraws its copies (finding 4), and an event whose
handling fails anyway is isolated and the sync goes on.

The attacker, mallory, is a cleared member of `deu` whose device nobody verified: the bot
shares no room key with it, but it can still send, encrypted (with its own session) or in
clear, and the bot reads what it sends."""

from __future__ import annotations

import asyncio
import functools
import secrets
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from nio import RedactedEvent, RoomSendResponse
from nio.api import Api

from bot.services.render import LABEL_KEY
from policy.adatp4774 import label_metadata, to_json
from policy.labels import parse_marking
from tests.bot_harness import BotEnv, audited, enrol, eventually, open_dm
from tests.matrix_harness import E2EEClient, MakeUser

BOT_EXTRA_CONFIG = """
[metrics]
bind = "127.0.0.1:0"
"""
RELAY_WITHIN_S = 30  # the bound for the next tagged message after a poison event


@dataclass
class Cast:
    admin: E2EEClient
    dm: str
    officer: E2EEClient
    nato: E2EEClient
    mallory: E2EEClient
    deu: str
    nato_s: str


@pytest.fixture(scope="module")
async def cast(
    bot_env: BotEnv,
    make_user: MakeUser,
    tmp_path_factory: pytest.TempPathFactory,
    synapse: Any,
    identities: Any,
) -> AsyncIterator[Cast]:
    from tests.matrix_harness import cross_sign

    clients: list[E2EEClient] = []

    async def client_for(user: Any, verified: bool = True) -> E2EEClient:
        c = await E2EEClient.create(synapse, user, tmp_path_factory.mktemp("store"))
        if verified:
            await cross_sign(synapse, c, identities)
        await c.start()
        clients.append(c)
        return c

    admin = await client_for(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    officer = await client_for(bot_env.officer)
    nato_user, mallory_user = make_user("nato-nor"), make_user("mallory")
    nato = await client_for(nato_user)
    mallory = await client_for(mallory_user, verified=False)
    grants = [
        (bot_env.officer.user_id, "DEU GEHEIM", "DEU"),
        (bot_env.officer.user_id, "NATO SECRET", "DEU"),
        (nato_user.user_id, "NATO SECRET", "NOR"),
        (mallory_user.user_id, "DEU GEHEIM", "DEU"),
    ]
    joins = [(officer, "deu"), (officer, "nato-s"), (nato, "nato-s"), (mallory, "deu")]
    await enrol((admin, dm), grants, joins)
    yield Cast(admin, dm, officer, nato, mallory, bot_env.room_id("deu"), bot_env.room_id("nato-s"))
    await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)


async def send(client: E2EEClient, room_id: str, content: dict[str, Any], encrypted: bool) -> str:
    """Send as the client's device: encrypted with its own session, or in clear (a client
    may put a plain m.room.message into an encrypted room; the server takes it)."""
    if encrypted:
        return await client.send_event(room_id, "m.room.message", content)
    nio = client.client
    method, path, data = Api.room_send(
        nio.access_token, room_id, "m.room.message", content, secrets.token_hex(8)
    )
    response = await nio._send(RoomSendResponse, method, path, data, response_data=(room_id,))
    assert isinstance(response, RoomSendResponse), response
    return str(response.event_id)


async def relays(cast: Cast, what: str) -> None:
    """A tagged message from the officer reaches nato-s within the issue's bound."""
    tag = f"probe-{secrets.token_hex(4)}"
    await cast.officer.send_text(cast.deu, f"[GEHEIM // REL TO NATO] {tag}")
    try:
        await cast.nato.wait_for_text(cast.nato_s, tag, RELAY_WITHIN_S)
    except AssertionError as exc:
        raise AssertionError(f"no relay within {RELAY_WITHIN_S} s after {what}") from exc


def healthz(env: BotEnv) -> int:
    """The status of the bot's /healthz (on the port its bind's port 0 got)."""
    assert env.bot is not None and env.bot.metrics_port is not None
    port = env.bot.metrics_port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def is_redacted(client: E2EEClient, room_id: str, event_id: str) -> bool:
    response = await client.client.room_get_event(room_id, event_id)
    event = getattr(response, "event", None)
    if isinstance(event, RedactedEvent):
        return True
    return getattr(event, "source", {}).get("content", None) == {}


LABEL = to_json(label_metadata(parse_marking("DEU GEHEIM // REL TO NATO")))
TARGET = "$mallory-own-message"  # replaced by the id of a message of mallory's own
EDIT = {"m.relates_to": {"rel_type": "m.replace", "event_id": TARGET}}
POISON: list[dict[str, Any]] = [
    {LABEL_KEY: 1},
    {LABEL_KEY: [1, {"a": None}]},
    {LABEL_KEY: True},
    {LABEL_KEY: 2.5},
    {LABEL_KEY: {"originatorConfidentialityLabel": {"ConfidentialityInformation": 7}}},
    {"m.relates_to": "x"},
    {"m.relates_to": {"rel_type": "m.replace", "event_id": 5}},
    {**EDIT, "m.new_content": {"msgtype": "m.text", "body": "[GEHEIM] x", LABEL_KEY: 1}},
    {**EDIT, "m.new_content": {"msgtype": "m.text", "body": "[GEHEIM] x", LABEL_KEY: [1]}},
    {**EDIT, "m.new_content": "x"},
    {"m.mentions": {"user_ids": "x"}},
    {"formatted_body": 5, "format": "org.matrix.custom.html"},
]


FLOAT_SHAPES = {3}  # Synapse refuses floats in clear events (M_BAD_JSON); not in ciphertext


@pytest.mark.parametrize(
    ("shape", "encrypted"),
    [
        (shape, encrypted)
        for shape in range(len(POISON))
        for encrypted in (True, False)
        if encrypted or shape not in FLOAT_SHAPES
    ],
)
async def test_a_poison_event_never_stops_the_bot(
    bot_env: BotEnv, cast: Cast, shape: int, encrypted: bool
) -> None:
    """Finding 1: each shape stalled the bot for good (the exception left the sync handler
    and the same batch was retried for ever). Now the next tagged message relays and the
    health check stays up."""
    content = {"msgtype": "m.text", "body": "[GEHEIM] hi", **POISON[shape]}
    if content.get("m.relates_to") == EDIT["m.relates_to"]:  # Synapse wants a known event
        own = await cast.mallory.send_text(cast.deu, "hello")
        content["m.relates_to"] = {"rel_type": "m.replace", "event_id": own}
    await send(cast.mallory, cast.deu, content, encrypted)
    await relays(cast, f"poison shape {shape} ({'encrypted' if encrypted else 'in clear'})")
    assert await asyncio.to_thread(healthz, bot_env) == 200


async def test_a_malformed_message_is_audited_and_its_sender_told(
    bot_env: BotEnv, cast: Cast
) -> None:
    mark = cast.officer.event_count(cast.deu)
    event_id = await cast.officer.send_event(
        cast.deu, "m.room.message", {"msgtype": "m.text", "body": "[GEHEIM] x", LABEL_KEY: 1}
    )
    reply = await cast.officer.wait_for_text(cast.deu, "content is malformed", after=mark)
    assert LABEL_KEY in reply.body and "Nothing was stored" in reply.body
    entry = await audited(bot_env, "event.malformed", event_id)
    assert entry.detail["problem"].startswith(LABEL_KEY)
    assert bot_env.store is not None and bot_env.store.item(event_id) is None


async def test_spillage_in_a_malformed_message_is_still_removed(
    bot_env: BotEnv, cast: Cast
) -> None:
    """Dropping a malformed event unread would let a broken label field carry a marking
    above the room past the spillage check: its body is judged all the same."""
    event_id = await send(
        cast.mallory,
        cast.deu,
        {"msgtype": "m.text", "body": "[STRENG GEHEIM] the whole plan", LABEL_KEY: 1},
        True,
    )
    await eventually(
        lambda: is_redacted(cast.officer, cast.deu, event_id), 30, "the spillage is redacted"
    )
    await audited(bot_env, "spillage", event_id)


async def test_an_edit_of_someone_elses_message_redacts_only_the_edit(
    bot_env: BotEnv, cast: Cast
) -> None:
    """Finding 2: an m.replace marked above the room made the bot redact the event it names
    (anyone's message, the bot's own copies, room state) and left the edit with its text."""
    target = await cast.officer.send_text(cast.deu, f"plain words {secrets.token_hex(3)}")
    state = await cast.officer.client.room_get_state(cast.deu)
    levels = next(e["event_id"] for e in state.events if e["type"] == "m.room.power_levels")
    for victim in (target, levels):
        edit = await send(
            cast.mallory,
            cast.deu,
            {
                "msgtype": "m.text",
                "body": "* [STRENG GEHEIM] x",
                "m.new_content": {"msgtype": "m.text", "body": "[STRENG GEHEIM] x"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": victim},
            },
            True,
        )
        await eventually(
            functools.partial(is_redacted, cast.officer, cast.deu, edit),
            30,
            "the edit is redacted",
        )
        assert not await is_redacted(cast.officer, cast.deu, victim)
    await relays(cast, "the edits")


async def test_re_marking_above_the_room_withdraws_the_relayed_copies(
    bot_env: BotEnv, cast: Cast
) -> None:
    """Finding 4: the edit and the original were redacted, the copies in nato-s stayed and
    the item stayed in search and digests under its old label."""
    tag = f"remark-{secrets.token_hex(3)}"
    original = await cast.officer.send_text(cast.deu, f"[GEHEIM // REL TO NATO] {tag}")
    copy = await cast.nato.wait_for_text(cast.nato_s, tag, RELAY_WITHIN_S)
    await cast.officer.send_event(
        cast.deu,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": f"* [STRENG GEHEIM] {tag}",
            "m.new_content": {"msgtype": "m.text", "body": f"[STRENG GEHEIM] {tag}"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": original},
        },
    )
    await eventually(
        lambda: is_redacted(cast.nato, cast.nato_s, copy.event_id), 30, "the copy is withdrawn"
    )
    assert await is_redacted(cast.officer, cast.deu, original)
    assert bot_env.store is not None
    item = bot_env.store.item(original)
    assert item is not None and item.redacted_at is not None


async def test_an_event_whose_handling_fails_is_isolated_and_the_sync_goes_on(
    bot_env: BotEnv, cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever else may raise (a defect of ours): the event is logged by type and id,
    audited as event.failed, marked handled, the admins alerted, counted, and the next
    message relays. The fault is injected in the relay, for one marked message."""
    assert bot_env.bot is not None
    relay = bot_env.bot.relay
    begin = relay.begin

    async def faulty(source: Any, body: str, **kw: Any) -> Any:
        if "boom" in body:
            raise RuntimeError(f"injected fault quoting {body!r}")
        return await begin(source, body, **kw)

    monkeypatch.setattr(relay, "begin", faulty)
    registry = bot_env.bot.metrics.registry
    failed_before = registry.get_sample_value("liaison_events_failed_total") or 0.0
    event_id = await cast.mallory.send_text(cast.deu, "[GEHEIM] boom words")
    entry = await audited(bot_env, "event.failed", event_id)
    assert entry.detail == {
        "room_id": cast.deu,
        "event": "RoomMessageText",
        "error": "RuntimeError",
    }
    alert = await cast.admin.wait_for_text(cast.dm, "could not be handled and was skipped")
    assert cast.mallory.user_id in alert.body and "boom" not in alert.body
    assert bot_env.store is not None and bot_env.store.is_handled(event_id)
    assert registry.get_sample_value("liaison_events_failed_total") == failed_before + 1
    await relays(cast, "an injected fault")


@pytest.mark.parametrize(
    "shape", ["emote", "notice", "edit-fallback", "precedence-first", "formatted", "notice-html"]
)
async def test_spillage_in_any_text_a_member_shows_is_removed(
    bot_env: BotEnv, cast: Cast, shape: str
) -> None:
    """Attack review of issue 24 (H1, M1): an m.emote or m.notice was never looked at, an
    edit was judged on its new text only (older clients show its `* …` fallback), and a
    precedence put first hid the level."""
    words = f"[STRENG GEHEIM] plan-{secrets.token_hex(3)}"
    if shape in ("emote", "notice"):
        content: dict[str, Any] = {"msgtype": f"m.{shape}", "body": words}
    elif shape == "precedence-first":
        content = {"msgtype": "m.text", "body": f"[FLASH] {words}"}
    elif shape in ("formatted", "notice-html"):  # clients show the formatted body
        content = {
            "msgtype": "m.text" if shape == "formatted" else "m.notice",
            "body": "[GEHEIM] harmless",
            "format": "org.matrix.custom.html",
            "formatted_body": f"<b>{words.replace(']', ']</b>', 1)}",
        }
    else:
        own = await cast.mallory.send_text(cast.deu, "harmless")
        content = {
            "msgtype": "m.text",
            "body": f"* {words}",
            "m.new_content": {"msgtype": "m.text", "body": "still harmless"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": own},
        }
    event_id = await send(cast.mallory, cast.deu, content, True)
    await eventually(
        lambda: is_redacted(cast.officer, cast.deu, event_id), 30, f"the {shape} is redacted"
    )
    await audited(bot_env, "spillage", event_id)
