"""The shared inventory: `!search` over stored items, never showing what the room may not see.

Item text is sealed at rest, so there is no plaintext index on disk: the search opens the
items of a bounded window (newest first, at most MAX_SCANNED) in memory and matches them
there; every match is filtered by `may_release` into the asking room first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from bot.services.digest import DigestItem, select_items
from bot.services.render import EXERCISE_LINE, target_banner
from bot.services.rooms import ManagedRoom
from commands.document import Banner, Block, Document, doc, heading, items, para

MAX_SCANNED = 10_000
SHOWN = 10
SNIPPET = 300


def search(
    room: ManagedRoom,
    candidates: Iterable[DigestItem],
    words: Sequence[str],
    topic: str | None,
    exercise: bool,
) -> list[DigestItem]:
    """Items that fit `room`, contain every word (case-insensitive), carry the topic, and are
    real traffic unless exercise is asked for; newest first."""
    wanted = [w.casefold() for w in words if w.strip()]
    tag = topic.casefold().lstrip("#") if topic else None
    found = []
    for item in select_items(room, candidates):
        if item.exercise != exercise:
            continue
        if tag is not None and tag not in item.topics:
            continue
        text = item.text.casefold()
        if all(w in text for w in wanted):
            found.append(item)
    return sorted(found, key=lambda i: i.created_at, reverse=True)


def results_document(
    room: ManagedRoom,
    query: str,
    found: Sequence[DigestItem],
    since: datetime,
    scanned: int,
    exercise: bool,
) -> Document:
    title = f"Search “{query}” in {room.key}: {len(found)} match(es) since {since:%Y-%m-%d}"
    blocks: list[Block] = [heading(title)]
    if exercise:
        blocks.append(para(Banner(EXERCISE_LINE, 0)))
    if not found:
        blocks.append(para("No stored item this room may see matches."))
    rows = []
    for item in found[:SHOWN]:
        banner, rank = target_banner(item.label, room.policy.scheme)
        text = item.text if len(item.text) <= SNIPPET else item.text[:SNIPPET] + "…"
        rows.append(
            (Banner(banner, rank), f" {item.created_at:%Y-%m-%d %H:%MZ} ({item.source_key}) ", text)
        )
    if rows:
        blocks.append(items(rows))
    if len(found) > SHOWN:
        blocks.append(
            para(f"… and {len(found) - SHOWN} more; narrow the words, --topic or --since.")
        )
    if scanned >= MAX_SCANNED:
        blocks.append(para(f"Only the newest {MAX_SCANNED} stored items were searched."))
    return doc(*blocks)
