"""Batched receipts and long notices, without a homeserver: the texts and the cutting."""

from __future__ import annotations

from collections.abc import Coroutine
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from bot.matrix.messenger import notice_content
from bot.services.inbox import _Tagged, batched_receipt
from bot.wire import EVENT_LIMIT, encrypted_size
from commands.document import (
    Block,
    Document,
    Items,
    Strong,
    doc,
    heading,
    items,
    para,
    split_document,
)
from policy.ids import EventId


def _rows(document: Document) -> list[object]:
    """Every line of a document, lists flattened, in order."""
    out: list[object] = []
    for block in document.blocks:
        out.extend(block.items if isinstance(block, Items) else [block])
    return out


def _tagged(n: int) -> _Tagged:
    async def never() -> Document:
        raise AssertionError("not awaited here")

    return _Tagged(
        EventId(f"$event{n}"), None, datetime(2026, 12, 3, 14, 5, n, tzinfo=UTC), never()
    )


def test_a_batched_receipt_names_each_message_and_keeps_every_refusal() -> None:
    first = doc(items([("Relayed to ", Strong("nato-s"), " as NATO SECRET.")]))
    second = doc(
        items(
            [
                ("Relayed to ", Strong("nato-s"), " as NATO SECRET."),
                ("Not relayed to ", Strong("eu-s"), ": not releasable to AUT."),
            ]
        )
    )
    third = doc(para("⚠ Not stored or relayed: unknown caveat 'XYZ'."))
    tagged = [_tagged(n) for n in (1, 2, 3)]
    receipt = batched_receipt(list(zip(tagged, [first, second, third], strict=True)))
    for t in tagged:
        assert isinstance(t.receipt, Coroutine)
        t.receipt.close()
    text = receipt.plain
    assert text.startswith("Receipt for your 3 tagged messages, in the order sent:")
    assert (
        text.index("1. sent 14:05:01Z $event1")
        < text.index("2. sent 14:05:02Z $event2")
        < text.index("3. sent 14:05:03Z $event3")
    )
    assert text.count("Relayed to nato-s") == 2
    assert "Not relayed to eu-s: not releasable to AUT." in text
    assert "unknown caveat 'XYZ'" in text


def test_a_thousand_rooms_listing_is_cut_into_notices_that_fit() -> None:
    rows = [(Strong(f"room-{i}"), " — NATO SECRET — Room name " + "x" * 40) for i in range(1000)]
    document = doc(heading("Managed rooms"), items(rows))
    assert encrypted_size(notice_content(document, "$e")) > EVENT_LIMIT

    def fits(part: Document) -> bool:
        return encrypted_size(notice_content(part, "$e")) <= EVENT_LIMIT

    parts = split_document(document, fits)
    assert len(parts) > 1
    assert all(fits(p) for p in parts)
    assert [r for p in parts for r in _rows(p)] == _rows(document)  # nothing lost or doubled


@given(
    st.lists(
        st.one_of(
            st.text(max_size=30).map(lambda t: para(t)),
            st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=12).map(
                lambda rows: items([(r,) for r in rows])
            ),
        ),
        min_size=1,
        max_size=12,
    ),
    st.integers(min_value=20, max_value=200),
)
def test_split_keeps_every_line_in_order_and_each_part_fits(
    blocks: list[Block], limit: int
) -> None:
    document = doc(*blocks)

    def fits(part: Document) -> bool:
        return len(part.plain) <= limit

    parts = split_document(document, fits)
    assert [r for p in parts for r in _rows(p)] == _rows(document)
    for part in parts:  # a part that does not fit is a single line too long on its own
        assert fits(part) or len(_rows(part)) == 1
