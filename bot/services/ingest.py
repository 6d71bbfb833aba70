"""Feed ingest (DESIGN §5a): labelled data feeds post items over authenticated HTTP.

`POST /feeds/KEY` with `Authorization: Bearer …` and JSON
`{"marking", "precedence", "text", "topics"}` → 202 (posted; the body gives the item id),
401 (bad or missing token), 404 (no such feed), 413 (over 40 000 bytes), 422 (bad JSON, bad
marking, or a label that does not fit the feed's room: spillage, nothing posted, admins
alerted). An item is posted in its room, stored and audited like a tagged message, with
provenance `feed KEY`; with `release = true` it is routed like an officer's.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from bot.config import FeedConfig
from bot.matrix.gateway import MatrixError
from bot.metrics import Metrics
from bot.services.ports import Audit, Messenger
from bot.services.relay import RelayEngine, Source
from bot.services.render import relay_copy
from bot.services.rooms import RoomDirectory
from commands.document import Strong, doc, items, para
from policy import MAX_TEXT_BYTES, MarkingError, Precedence, TaggedMessage, fits, parse_marking
from policy.ids import RoomKey

log = logging.getLogger(__name__)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class FeedListener:
    def __init__(
        self,
        feeds: list[FeedConfig],
        tokens: dict[str, str],
        caveats: Sequence[str],
        rooms: RoomDirectory,
        relay: RelayEngine,
        messenger: Messenger,
        audit: Audit,
        metrics: Metrics,
    ) -> None:
        self.caveats = caveats
        self.rooms = rooms
        self.relay = relay
        self.messenger = messenger
        self.audit = audit
        self.metrics = metrics
        self.feeds = {f.key: f for f in feeds}
        self.tokens = tokens
        self._runner: web.AppRunner | None = None

    async def start(self, bind: str) -> None:
        app = web.Application(client_max_size=2 * MAX_TEXT_BYTES)
        app.router.add_post("/feeds/{key}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, _, port = bind.rpartition(":")
        await web.TCPSite(self._runner, host.strip("[]"), int(port)).start()
        log.info("feed ingest on http://%s/feeds/…", bind)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        feed = self.feeds.get(RoomKey(key))
        if feed is None:
            return _error(404, f"no feed {key!r}")
        offered = request.headers.get("Authorization", "")
        token = self.tokens.get(key, "")
        if not (
            token
            and offered.startswith("Bearer ")
            and hmac.compare_digest(offered[7:].encode(), token.encode())
        ):
            await self.audit(f"feed {key}", "feed.unauthorised", key, {})
            return _error(401, "bad or missing bearer token")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body over {2 * MAX_TEXT_BYTES} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(422, f"bad JSON: {exc}")
        if not isinstance(body, dict):
            return _error(422, "bad JSON: expected an object")
        problem = _check_fields(body)
        if problem:
            return _error(422, problem)
        text: str = body["text"]
        if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
            return _error(413, f"text over {MAX_TEXT_BYTES} bytes")
        room = self.rooms.by_key.get(feed.room)
        if room is None:
            return _error(404, f"the feed's room {feed.room!r} is not managed")
        try:
            label = parse_marking(body["marking"], room.policy.scheme, extra_caveats=self.caveats)
        except MarkingError as exc:
            return _error(422, f"marking: {exc}")
        precedence = Precedence[body.get("precedence", "ROUTINE").upper()]
        topics = tuple(dict.fromkeys(t.casefold().lstrip("#") for t in body.get("topics", [])))
        own = fits(label, room.policy)
        if not own.allowed:
            await self.audit(
                f"feed {key}",
                "spillage",
                key,
                {"room": room.key, "marking": label.banner, "reason": own.reason},
            )
            self.metrics.relays.labels("spillage").inc()
            await self.messenger.alert_admins(
                doc(
                    para(
                        "⚠ Spillage refused at the feed listener: feed ",
                        Strong(key),
                        " offered an item for ",
                        Strong(room.key),
                        f" ({room.banner}).",
                    ),
                    items([("marking: ", label.banner), ("why: ", own.reason)]),
                    para("Nothing was posted."),
                )
            )
            return _error(422, f"spillage: {label.banner} does not fit {room.key}: {own.reason}")
        message = TaggedMessage(label, precedence, False, text, topics)
        now = datetime.now(UTC)
        content = relay_copy(
            label=label,
            precedence=precedence,
            exercise=False,
            text=text,
            target_scheme=room.policy.scheme,
            source_key=room.key,
            source_name=room.name,
            sender=f"feed {key}",
            sent_at=now,
            source_event_id="",
            provenance=f"From feed {key} · {{when}}",
        )
        try:
            event_id = await self.messenger.send(room.room_id, content)
        except MatrixError as exc:
            log.error("feed %s: could not post: %s", key, exc)
            return _error(503, "the homeserver did not take the item; try again")
        source = Source(room, event_id, f"feed {key}", now, None)
        await self.relay.store_item(source, message, origin=f"feed {key}")
        result: dict[str, Any] = {"item": event_id, "room": room.key}
        if feed.release:
            receipt = await self.relay.release(source, message)
            result["receipt"] = receipt.plain
        log.info("feed %s posted %s in %s", key, event_id, room.key)
        return web.json_response(result, status=202)


def _check_fields(body: dict[str, Any]) -> str | None:
    """None when the fields are usable, else what is wrong, naming the field."""
    if not isinstance(body.get("marking"), str) or not body["marking"].strip():
        return 'marking: required, a string such as "NATO SECRET"'
    if not isinstance(body.get("text"), str) or not body["text"].strip():
        return "text: required, a non-empty string"
    precedence = body.get("precedence", "ROUTINE")
    if not isinstance(precedence, str) or precedence.upper() not in Precedence.__members__:
        return f"precedence: {precedence!r} is not FLASH, IMMEDIATE, PRIORITY or ROUTINE"
    topics = body.get("topics", [])
    if not isinstance(topics, list) or not all(isinstance(t, str) and t for t in topics):
        return "topics: expected a list of strings"
    unknown = sorted(set(body) - {"marking", "precedence", "text", "topics"})
    if unknown:
        return f"unknown field(s): {', '.join(unknown)}"
    return None
