"""Feed ingest over real HTTP, read back with an E2EE client."""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import urllib.error
import urllib.request
from typing import Any

from bot.devtools.e2ee_client import open_dm
from bot.services.render import LABEL_KEY
from policy import parse_marking
from policy.adatp4774 import from_json, label_metadata, to_json, to_label, to_xml
from tests.bot_harness import ROOMS, Arrived, BotEnv, enrol, nothing_arrives, text_with
from tests.matrix_harness import MakeClient, MakeUser

BOT_FEED_TOKENS = {"sat": "sat-token-123", "deu-sig": "sig-token-456"}
BOT_ROOMS = (
    ROOMS
    + """
[ingest]
bind = "127.0.0.1:0"

[[ingest.feeds]]
key = "sat"
room = "nato-s"
token_env = "LIAISON_FEED_SAT"

[[ingest.feeds]]
key = "deu-sig"
room = "deu"
token_env = "LIAISON_FEED_SIG"
release = true
"""
)


def post_to(
    port: int, key: str, body: object, token: str | None, raw: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/feeds/{key}", data=data, method="POST"
    )
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def test_feeds_post_store_route_and_refuse(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    member = make_user("feed-reader")
    reader = await make_client(member)
    await enrol((admin, dm), [(member.user_id, "NATO SECRET", "ITA")], [(reader, "nato-s")])
    nato_s = bot_env.room_id("nato-s")
    assert bot_env.bot is not None and bot_env.bot.feeds is not None
    post = functools.partial(post_to, bot_env.bot.feeds.port)  # bind's port 0: any free one

    phrase = f"sat-{secrets.token_hex(3)}"
    status, body = await asyncio.to_thread(
        post,
        "sat",
        {
            "marking": "SECRET",
            "precedence": "immediate",
            "text": f"<b>{phrase}</b> pass",
            "topics": ["#orbit"],
        },
        "sat-token-123",
    )
    assert status == 202, body
    posted = await reader.wait_for_text(nato_s, phrase)
    assert posted.body.splitlines()[0] == "NATO SECRET — originator: NATO SECRET"
    assert "From feed sat · " in posted.body and "[IMMEDIATE]" in posted.body
    assert "&lt;b&gt;" in posted.source["content"]["formatted_body"]
    assert body["item"] == posted.event_id
    assert bot_env.store is not None
    item = bot_env.store.item(body["item"])
    assert item is not None and item.origin == "feed sat" and item.topics == ()  # in clear
    assert bot_env.bot is not None and bot_env.bot.relay.open_item(item)[1] == ("orbit",)

    released = f"sig-{secrets.token_hex(3)}"
    status, body = await asyncio.to_thread(
        post, "deu-sig", {"marking": "GEHEIM // REL TO NATO", "text": released}, "sig-token-456"
    )
    assert status == 202 and "Relayed to nato-s" in body["receipt"]
    copy = await reader.wait_for_text(nato_s, released)
    assert "· feed deu-sig ·" in copy.body

    # A feed may give the label as ADatP-4774 (XML or its JSON form) instead of a marking;
    # the post carries it machine-readable, with the feed as originator.
    as_xml = f"xml-{secrets.token_hex(3)}"
    status, body = await asyncio.to_thread(
        post,
        "sat",
        {"label": to_xml(label_metadata(parse_marking("NATO CONFIDENTIAL"))), "text": as_xml},
        "sat-token-123",
    )
    assert status == 202, body
    posted = await reader.wait_for_text(nato_s, as_xml)
    assert posted.body.splitlines()[0] == "NATO CONFIDENTIAL — originator: NATO CONFIDENTIAL"
    meta = from_json(posted.source["content"][LABEL_KEY])
    assert to_label(meta.originator) == parse_marking("NATO CONFIDENTIAL")
    assert meta.originator.originator == "urn:io.github.liaison-bot:feed:sat"
    as_json = f"json-{secrets.token_hex(3)}"
    status, body = await asyncio.to_thread(
        post,
        "sat",
        {"label": to_json(label_metadata(parse_marking("NATO RESTRICTED"))), "text": as_json},
        "sat-token-123",
    )
    assert status == 202, body
    await reader.wait_for_text(nato_s, as_json)

    mark = reader.event_count(nato_s)
    cases: list[tuple[tuple[Any, ...], int, str]] = [  # the arguments of post
        (("sat", {"marking": "NS", "text": "x"}, "wrong"), 401, "bearer"),
        (("sat", {"marking": "NS", "text": "x"}, None), 401, "bearer"),
        # an unknown feed is answered like a bad token: feed keys cannot be enumerated
        (("nope", {"marking": "NS", "text": "x"}, "sat-token-123"), 401, "bearer"),
        (("sat", None, "sat-token-123", b"{not json"), 422, "bad JSON"),
        (("sat", ["a"], "sat-token-123"), 422, "expected an object"),
        (("sat", {"text": "x"}, "sat-token-123"), 422, "marking: required"),
        (
            ("sat", {"marking": "NS", "label": "<x/>", "text": "x"}, "sat-token-123"),
            422,
            "give one of them, not both",
        ),
        (("sat", {"label": 7, "text": "x"}, "sat-token-123"), 422, "label: expected"),
        (
            ("sat", {"label": "<originatorConfidentialityLabel/>", "text": "x"}, "sat-token-123"),
            422,
            "label: label: element 'originatorConfidentialityLabel' is in no namespace",
        ),
        (("sat", {"marking": "NS", "text": ""}, "sat-token-123"), 422, "text: required"),
        (
            ("sat", {"marking": "NS", "text": "x", "precedence": "NOW"}, "sat-token-123"),
            422,
            "precedence",
        ),
        (
            ("sat", {"marking": "NS", "text": "x", "colour": 1}, "sat-token-123"),
            422,
            "unknown field(s): colour",
        ),
        (
            ("sat", {"marking": "SECRTE", "text": "x"}, "sat-token-123"),
            422,
            "unknown marking 'SECRTE'",
        ),
        (("sat", {"marking": "NS", "text": "x" * 40_001}, "sat-token-123"), 413, "40000"),
        (
            (
                "sat",
                {"marking": "COSMIC TOP SECRET", "text": "payload-never-shown"},
                "sat-token-123",
            ),
            422,
            "spillage",
        ),
    ]
    for args, code, message in cases:
        status, body = await asyncio.to_thread(post, *args)
        assert status == code, (args[:1], status, body)
        assert message in body["error"], body
    unknown, bad = [
        await asyncio.to_thread(post, key, {"marking": "NS", "text": "x"}, token)
        for key, token in (("nope", "sat-token-123"), ("sat", "wrong"))
    ]
    assert unknown == bad == (401, {"error": "bad or missing bearer token"})
    alert = await admin.wait_for_text(dm, "Spillage refused at the feed listener")
    assert "COSMIC TOP SECRET" in alert.body and "payload-never-shown" not in alert.body

    async def accepted_post() -> Arrived:  # the same path, into the same room, after them
        tag = f"barrier-{secrets.token_hex(4)}"
        status, _ = await asyncio.to_thread(
            post, "sat", {"marking": "NS", "text": tag}, "sat-token-123"
        )
        assert status == 202
        return text_with(tag)

    # nothing was posted by any refused request
    await nothing_arrives(
        reader, nato_s, lambda e: True, since=mark, barrier=accepted_post, what="a refused post"
    )
