"""Fuzzing the HTML of what the bot posts (relayed copies, digests) with hypothesis, held to
the allow-list check of tests/fuzzing.py, which is itself tested here first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bot.services.digest import DigestItem, build_digest, select_items
from bot.services.render import relay_copy
from bot.services.rooms import ManagedRoom
from commands.document import doc, para
from policy import Label, Precedence, make_room, parse_marking
from policy.ids import RoomId, RoomKey
from tests.fuzzing import FUZZ, FUZZ_SLOW, SCHEMES, checked_html, lone_surrogates, mixed


def test_the_html_check_catches_unescaped_markup() -> None:
    """The allow-list check itself must be able to fail, or the properties below prove nothing."""
    for bad in (
        "<p><script>alert(1)</script></p>",
        '<p><img src=x onerror="alert(1)"></p>',
        '<a href="javascript:alert(1)">x</a>',
        '<font color="red" onmouseover="x">x</font>',
        "<p><!-- hidden --></p>",
        '<p class="x">x</p>',
    ):
        with pytest.raises(AssertionError):
            checked_html(bad)
    assert checked_html(doc(para("<script>x</script>")).html) == "<script>x</script>"


user_texts = st.text(
    st.characters(codec=None) | lone_surrogates | st.sampled_from("<>&\"'"), max_size=60
) | mixed(st.sampled_from(["<", ">", "&", '"', "'", "\n"]), 6)
LABELS = [
    parse_marking(m)
    for m in (
        "NATO SECRET",
        "NATO SECRET // ATOMAL // REL TO EU",
        "DEU GEHEIM // REL TO NATO",
        "NATO CONFIDENTIAL",
        "EU RESTRICTED",
        "COSMIC TOP SECRET // BOHEMIA",
    )
]


@FUZZ
@given(
    text=user_texts,
    label=st.sampled_from(LABELS),
    precedence=st.sampled_from(list(Precedence)),
    exercise=st.booleans(),
    scheme=st.sampled_from(SCHEMES),
    source_name=user_texts,
    sender=user_texts,
)
@example(
    text="<script>alert(1)</script><img src=x onerror=alert(1)>",
    label=LABELS[0],
    precedence=Precedence.FLASH,
    exercise=True,
    scheme="NATO",
    source_name='<a href="javascript:x">',
    sender='@"><iframe>:x',
)
def test_relayed_copy_html_escapes_everything_the_user_wrote(
    text: str,
    label: Label,
    precedence: Precedence,
    exercise: bool,
    scheme: str,
    source_name: str,
    sender: str,
) -> None:
    """formatted_body carries only the renderer's tags, and the user's text comes back out
    of it intact (escaped, not dropped)."""
    content = relay_copy(
        label=label,
        precedence=precedence,
        exercise=exercise,
        text=text,
        target_scheme=scheme,
        source_key="deu",
        source_name=source_name,
        sender=sender,
        sent_at=datetime(2026, 11, 25, 14, 5, tzinfo=UTC),
        source_event_id="$e",
    )
    shown = checked_html(content["formatted_body"])
    assert text in shown and source_name in shown and sender in shown
    assert text in content["body"]


NATO_ROOM = ManagedRoom(
    RoomKey("nato-s"),
    "NATO SECRET liaison",
    make_room(parse_marking("NATO SECRET")),
    RoomId("!n:x"),
)
DEU_ROOM = ManagedRoom(
    RoomKey("deu"), "DEU cell", make_room(parse_marking("DEU GEHEIM")), RoomId("!d:x")
)
T0 = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


@st.composite
def digest_items(draw: st.DrawFn) -> DigestItem:
    source = draw(st.sampled_from([NATO_ROOM, DEU_ROOM, None]))
    return DigestItem(
        event_id=draw(st.sampled_from(["$a", "$b", "$c"]) | user_texts),
        label=draw(st.sampled_from(LABELS)),
        source_key=draw(st.sampled_from(["nato-s", "deu"]) | user_texts),
        source=source,
        precedence=draw(st.sampled_from(list(Precedence))),
        exercise=draw(st.booleans()),
        topics=tuple(draw(st.lists(user_texts, max_size=3))),
        text=draw(user_texts | st.sampled_from(["<b>" * 300, "&" * 600])),
        created_at=T0 + timedelta(minutes=draw(st.integers(0, 600))),
    )


@FUZZ_SLOW
@given(
    items=st.lists(digest_items(), max_size=8),
    room_name=user_texts,
    room_key=st.sampled_from(["nato-s"]) | user_texts,
)
@example(
    items=[
        DigestItem(
            "$x", LABELS[0], "nato-s", NATO_ROOM, Precedence.FLASH, False, ("<t>",),
            "bad \ud800 <script>", T0,
        )
    ],
    room_name="<script>",
    room_key="k",
)  # fmt: skip
def test_digest_html_escapes_everything_the_user_wrote(
    items: list[DigestItem], room_name: str, room_key: str
) -> None:
    """Selected or not, every item text, topic, source key and the room's name are escaped
    in the digest's HTML; the digest renders whatever the items hold."""
    room = ManagedRoom(RoomKey(room_key), room_name, NATO_ROOM.policy, RoomId("!n:x"))
    selected = select_items(room, items)
    for chosen in (selected, items):
        document = build_digest(room, chosen, T0, T0 + timedelta(hours=12))
        shown = checked_html(document.html)
        assert room_name in shown and room_key in shown
        for item in chosen:
            if len(item.text) <= 500:  # longer texts are cut at 500 characters
                assert item.text in shown
            assert item.source_key in shown
            for topic in item.topics:
                assert f"#{topic} (" in shown
