"""The digest's picture on a real Synapse, read by members' real E2EE clients: an encrypted
m.image after the digest's text, whose media only its key opens (hash checked), a PNG of the
size it says, with the digest's counts as alt text and its banner's label; a device the
policy does not trust gets no key for it; no items, or `chart = false`, no picture; sent
twice under one transaction id, one event. The drawing itself: test_digest_chart_unit.py."""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Callable
from typing import Any

from nio import Event, MegolmEvent, MemoryDownloadResponse

from bot.devtools.botenv import NATO_DIGEST, rooms_config
from bot.devtools.e2ee_client import E2EEClient
from bot.services.digest_chart import ChartData, render_chart
from bot.services.render import LABEL_KEY
from commands.document import doc
from tests.bot_harness import BotEnv, enrol, in_audit, talk
from tests.matrix_harness import MakeClient, MakeUser

# nato-s: the NATO digest (chart by default); deu: a digest without pictures; nato-r: no
# schedule and no traffic.
BOT_ROOMS = (
    rooms_config("nato-r")
    + NATO_DIGEST
    + """
[[digests]]
room = "deu"
cron = "0 6 * * *"
window = "24h"
sources = ["deu"]
chart = false
"""
)


def is_image(event: Event) -> bool:
    return bool(getattr(event, "source", {}).get("content", {}).get("msgtype") == "m.image")


def png_header(png: bytes) -> tuple[int, int]:
    """Width and height as the PNG's IHDR chunk says (read here, not with the bot's code)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", png[:16]
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def images_between(client: E2EEClient, room_id: str, after: int, before_event: str) -> list[Any]:
    """The m.image events after index `after` and before the event `before_event`."""
    events = client.events.get(room_id, [])[after:]
    ids = [getattr(e, "event_id", None) for e in events]
    assert before_event in ids, client.summary(room_id)
    return [e for e in events[: ids.index(before_event)] if is_image(e)]


def _posted(room_key: str) -> Callable[[list[Any]], Any]:
    """The newest `digest.posted` entry of `!digest now` in that room."""

    def find(entries: list[Any]) -> Any:
        subject = f"now:{room_key}"
        return next(
            (e for e in entries if e.action == "digest.posted" and e.subject == subject), None
        )

    return find


async def test_a_digest_with_items_comes_with_an_encrypted_picture_of_them(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    officer = await make_client(bot_env.officer)
    duty = make_user("duty")
    duty_client = await make_client(duty)
    deu, nato_s = await enrol(
        bot_env,
        [
            (bot_env.officer.user_id, "DEU GEHEIM", "DEU"),
            (bot_env.officer.user_id, "NATO SECRET", "DEU"),
            (duty.user_id, "NATO SECRET", "DNK"),
        ],
        [(officer, "deu"), (duty_client, "nato-s")],
    )
    # A second device of the member that nobody cross-signed: the policy gives it no key.
    unsigned = await make_client(duty, cross_signed=False)
    tag = secrets.token_hex(3)
    traffic = [
        f"[GEHEIM // REL TO NATO] [FLASH] flash-one-{tag}",
        f"[GEHEIM // REL TO NATO] [FLASH] flash-two-{tag}",
        f"[GEHEIM // REL TO NATO] [IMMEDIATE] immediate-{tag}",
        f"[GEHEIM // REL TO NATO] [EXERCISE] [PRIORITY] drill-{tag}",
    ]
    for text in traffic:
        await officer.send_text(deu, text)
        await duty_client.wait_for_text(nato_s, text.rsplit(" ", 1)[1], 60)
    await officer.send_text(deu, f"[GEHEIM] [FLASH] national-{tag}")  # never in nato-s

    mark = duty_client.event_count(nato_s)
    done = await talk(duty_client, nato_s, "!digest now", "Digest posted in nato-s", 60)
    digest = await duty_client.wait_for_text(nato_s, "Situation digest", after=mark)
    assert "3 item(s): FLASH 2, IMMEDIATE 1." in digest.body
    assert "Exercise traffic (1, not counted above)" in digest.body
    (image,) = images_between(duty_client, nato_s, mark, done.event_id)
    events = duty_client.events[nato_s]
    assert events.index(digest) < events.index(image)  # the picture follows its part
    content = image.source["content"]
    assert image.sender == bot_env.bot_user.user_id

    # alt text: the digest's counts, no item's text
    assert content["body"].endswith(
        ": 4 item(s); FLASH 2, IMMEDIATE 1, PRIORITY 0, ROUTINE 0; exercise 1."
    )
    assert tag not in content["body"]
    # the banner's label, exactly as the text part carries it
    assert content[LABEL_KEY] == digest.source["content"][LABEL_KEY]
    assert "url" not in content  # the media only as an EncryptedFile
    file, info = content["file"], content["info"]
    assert file["v"] == "v2" and file["url"].startswith("mxc://")

    # the homeserver holds ciphertext; the event's key and iv open it (hash checked)
    raw = await duty_client.client.download(mxc=file["url"])
    assert isinstance(raw, MemoryDownloadResponse), raw
    assert not raw.body.startswith(b"\x89PNG")
    png = await duty_client.download_image(image)
    assert png_header(png) == (info["w"], info["h"]) == (1200, 600)
    assert info["mimetype"] == "image/png" and info["size"] == len(png)
    assert hashlib.sha256(png).digest() != hashlib.sha256(raw.body).digest()
    thumbnail = await duty_client.download_file(info["thumbnail_file"])
    thumb_info = info["thumbnail_info"]
    assert png_header(thumbnail) == (thumb_info["w"], thumb_info["h"]) == (600, 300)
    assert thumb_info["size"] == len(thumbnail)

    # the device the policy does not trust has the event, and no key to open it
    sealed = await unsigned.wait_for(nato_s, lambda e: e.event_id == image.event_id, 60)
    await unsigned.synced()
    sealed = next(e for e in unsigned.events[nato_s] if e.event_id == image.event_id)
    assert isinstance(sealed, MegolmEvent), unsigned.summary(nato_s)
    olm = unsigned.client.olm
    assert olm is not None
    assert olm.inbound_group_store.get(nato_s, sealed.sender_key, sealed.session_id) is None
    posted = await in_audit(bot_env, _posted("nato-s"), "the digest posted", limit=30)
    assert posted.detail["charts"] == 1


async def test_no_items_no_picture_and_chart_false_no_picture(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    desk, cell = make_user("desk"), make_user("cell")
    desk_client, cell_client = await make_client(desk), await make_client(cell)
    deu, nato_r = await enrol(
        bot_env,
        [(cell.user_id, "DEU GEHEIM", "DEU"), (desk.user_id, "NATO SECRET", "NOR")],
        [(cell_client, "deu"), (desk_client, "nato-r")],
    )
    # nato-r has no traffic: its digest says so, and comes with no picture
    mark = desk_client.event_count(nato_r)
    done = await talk(desk_client, nato_r, "!digest now", "Digest posted in nato-r", 60)
    empty = await desk_client.wait_for_text(nato_r, "No items in this window", after=mark)
    assert empty.event_id != done.event_id
    assert images_between(desk_client, nato_r, mark, done.event_id) == []
    posted = await in_audit(bot_env, _posted("nato-r"), "the empty digest posted", limit=30)
    assert posted.detail["charts"] == 0

    # deu has items, and its schedule says chart = false: the text only
    tag = secrets.token_hex(3)
    await talk(cell_client, deu, f"[GEHEIM] [FLASH] national-{tag}", "Stored for the digest", 60)
    mark = cell_client.event_count(deu)
    done = await talk(cell_client, deu, "!digest now", "Digest posted in deu", 60)
    digest = await cell_client.wait_for_text(deu, "Situation digest", after=mark)
    assert f"national-{tag}" in digest.body
    assert images_between(cell_client, deu, mark, done.event_id) == []


async def test_a_picture_sent_again_under_its_transaction_id_is_one_event(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    """What a re-drive after a crash does: the picture drawn, encrypted and uploaded again,
    sent under the same id; the room holds the first one only."""
    bot = bot_env.bot
    assert bot is not None
    reader = make_user("reader")
    reader_client = await make_client(reader)
    (nato_r,) = await enrol(
        bot_env, [(reader.user_id, "NATO SECRET", "SWE")], [(reader_client, "nato-r")]
    )
    now = bot.digests.clock()
    chart = render_chart(ChartData.of([], now, now, "NATO RESTRICTED", 1))
    tx_id = f"chart-test-{secrets.token_hex(4)}"
    mark = reader_client.event_count(nato_r)
    sent = [
        await bot.messenger.send_image(
            nato_r,
            chart.png,
            width=chart.width,
            height=chart.height,
            alt=f"try {n}",
            label_content={},
            thumbnail=chart.thumbnail,
            tx_id=tx_id,
        )
        for n in (1, 2)
    ]
    assert sent[0] == sent[1]
    after = await bot.messenger.send_notice(nato_r, doc("after the pictures"))
    await reader_client.wait_for(nato_r, lambda e: e.event_id == after, 60)
    images = images_between(reader_client, nato_r, mark, after)
    assert [i.source["content"]["body"] for i in images] == ["try 1"]
