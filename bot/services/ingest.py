"""Feed ingest: labelled data feeds post items over authenticated HTTP.

`POST /feeds/KEY` with `Authorization: Bearer …` and JSON `{"marking", "precedence", "text",
"topics"}` (or `"label"`, an ADatP-4774 label as an XML string or its JSON object, in place
of `"marking"`) → 202 (posted; the body gives the item id), 401 (bad or missing token, or no
such feed: both answered alike, so feed keys cannot be enumerated), 408 (body not received
in time), 413 (text over 40 000 bytes, or a JSON body over 256 000 bytes), 422 (bad JSON,
bad marking, or a label that does not fit the feed's room: spillage, nothing posted, admins
alerted). An item is posted in its room, stored and audited like a tagged message, with
provenance `feed KEY`; with `release = true` it is routed like an officer's.

Limits against slow or hostile clients:
- the request line and headers must arrive within `HEADER_TIMEOUT_S` of the connection
  opening (or of the previous response, on a kept-alive connection): aiohttp's
  `keepalive_timeout` closes a connection whose next request has not been fully read by
  then, so it is both the header and the idle timeout;
- the body must arrive within `BODY_TIMEOUT_S` (`asyncio.timeout` around the read): 408
  and the connection is closed;
- after an answer sent before the whole body was read (401, 408, 413), aiohttp drains the
  rest for `LINGER_S` at most (`lingering_time`, 10 s by default) before closing;
- the body is at most `MAX_BODY_BYTES`: any text within the 40 000-byte limit fits however
  a JSON encoder escapes it (at most 6 bytes, a `\\u00XX` escape, per byte of text), with
  16 000 bytes to spare for the other fields;
- `handler_cancellation` stays off: a client hanging up must not cut a handler between
  posting the item and storing it; the timeouts bound what a slow client can hold;
- failed authentications are audited at most `UNAUTHORISED_AUDITS_PER_MINUTE` times per
  feed key a minute; the rest are counted (`liaison_feed_unauthorised_total{audit=
  "suppressed"}`) and summed up in one `feed.unauthorised.suppressed` row per minute.

The feed's audit rows name the request's remote address (`source`; the summary row the
first `MAX_SOURCES` distinct ones, `sources`): a SOC that receives the audit (README "Audit
to the SOC") can match a refused or spilled feed post to the host that made it. It is the
peer's address as the listener sees it: behind a proxy, the proxy's.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from bot.config import FeedConfig
from bot.metrics import Metrics, bound_port
from bot.services.ports import Audit, HomeserverError, Messenger
from bot.services.relay import RelayEngine, Source
from bot.services.render import relay_copy
from bot.services.rooms import RoomDirectory
from commands.document import Strong, doc, items, para
from policy import MAX_TEXT_BYTES, MarkingError, Precedence, TaggedMessage, fits, parse_marking
from policy.adatp4774 import import_label
from policy.ids import RoomKey

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
LINGER_S = 2.0
MAX_BODY_BYTES = 6 * MAX_TEXT_BYTES + 16_000  # 256 000
UNAUTHORISED_AUDITS_PER_MINUTE = 5
UNAUTHORISED_KEYS_PER_MINUTE = 64  # distinct keys audited apart; beyond, pooled under "*"
UNAUTHORISED = "bad or missing bearer token"
MAX_SOURCES = 16  # distinct remote addresses a summary row names
_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


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
        *,
        header_timeout: float = HEADER_TIMEOUT_S,
        body_timeout: float = BODY_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.caveats = caveats
        self.rooms = rooms
        self.relay = relay
        self.messenger = messenger
        self.audit = audit
        self.metrics = metrics
        self.feeds = {f.key: f for f in feeds}
        self.tokens = tokens
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        # Tokens are compared as SHA-256 digests (equal lengths, constant time); an unknown
        # feed is compared against a random dummy, so it costs the same as a bad token.
        self._digests = {key: _digest(token) for key, token in tokens.items() if token}
        self._dummy = _digest(os.urandom(32).hex())
        self._clock = clock
        self._window_start: float | None = None
        self._audited: Tally[str] = Tally()
        self._suppressed: Tally[str] = Tally()
        self._suppressed_sources: set[str] = set()
        self.unauthorised = Counter(
            "liaison_feed_unauthorised_total",
            "Feed requests refused with 401, by whether an audit row was written",
            ["audit"],
            registry=metrics.registry,
        )
        self._runner: web.AppRunner | None = None

    async def start(self, bind: str) -> None:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/feeds/{key}", self.handle)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            keepalive_timeout=self.header_timeout,
            lingering_time=LINGER_S,
            handler_cancellation=False,
        )
        await self._runner.setup()
        host, _, port = bind.rpartition(":")
        await web.TCPSite(self._runner, host.strip("[]"), int(port)).start()
        log.info("feed ingest on http://%s:%d/feeds/…", host, self.port)

    @property
    def port(self) -> int:
        """The port the started listener holds (bind's, or the one port 0 got)."""
        assert self._runner is not None, "not started"
        return bound_port(self._runner)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        try:
            await self._flush_unauthorised()
        except Exception:
            log.exception("could not audit the last minute's refused feed requests")

    async def handle(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        feed = self.feeds.get(RoomKey(key))
        offered = request.headers.get("Authorization", "")
        supplied = offered[7:] if offered.startswith("Bearer ") else ""
        matches = hmac.compare_digest(_digest(supplied), self._digests.get(key, self._dummy))
        if feed is None or not supplied or not matches:
            if feed is None:
                await self._unauthorised(key, "no such feed", "feed.unknown", _source(request))
            else:
                await self._unauthorised(
                    key, "bad or missing token", "feed.token_invalid", _source(request)
                )
            return _error(401, UNAUTHORISED)
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _too_large()
        try:
            async with asyncio.timeout(self.body_timeout):
                raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _too_large()
        except TimeoutError:
            late = _error(408, f"body not received within {self.body_timeout:g} s")
            late.force_close()
            return late
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
            if "label" in body:
                label = import_label(body["label"], extra_caveats=self.caveats)
            else:
                label = parse_marking(
                    body["marking"], room.policy.scheme, extra_caveats=self.caveats
                )
        except MarkingError as exc:
            return _error(422, f"{'label' if 'label' in body else 'marking'}: {exc}")
        precedence = Precedence[body.get("precedence", "ROUTINE").upper()]
        topics = tuple(dict.fromkeys(t.casefold().lstrip("#") for t in body.get("topics", [])))
        own = fits(label, room.policy)
        if not own.allowed:
            await self.audit(
                f"feed {key}",
                "spillage",
                key,
                {
                    "room": room.key,
                    "marking": label.banner,
                    "reason": own.reason,
                    "reason_code": own.code,
                    "source": _source(request),
                },
            )
            self.metrics.relays.labels("spillage").inc()
            # No transaction id: an HTTP request, not an event, causes it (see the post).
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
            originator=f"urn:io.github.liaison-bot:feed:{key}",
        )
        # A random transaction id: the request carries no id of its own, and one made from
        # its text would swallow a feed's legitimate second post of the same text. So a
        # request the bot dies in (posted, not answered 202) is posted again if the feed
        # sends it again: the feed API has no idempotency key yet.
        try:
            event_id = await self.messenger.send(room.room_id, content)
        except HomeserverError as exc:
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

    async def _unauthorised(self, key: str, reason: str, code: str, source: str) -> None:
        """Audit a refused request, at most UNAUTHORISED_AUDITS_PER_MINUTE rows per key a
        minute; count the rest for one summary row. Known and unknown keys take the same
        path (and the same time), so the audit does not tell them apart to the caller.
        `code`: the reason's machine code, which a SIEM export carries."""
        now = self._clock()
        if self._window_start is None or now - self._window_start >= 60:
            await self._flush_unauthorised()
            self._window_start = now
        bucket = key if _KEY.match(key) else "(malformed)"
        if bucket not in self._audited and len(self._audited) >= UNAUTHORISED_KEYS_PER_MINUTE:
            bucket = "*"
        if self._audited[bucket] >= UNAUTHORISED_AUDITS_PER_MINUTE:
            self._suppressed[bucket] += 1
            if len(self._suppressed_sources) < MAX_SOURCES:
                self._suppressed_sources.add(source)
            self.unauthorised.labels("suppressed").inc()
            return
        self._audited[bucket] += 1
        self.unauthorised.labels("audited").inc()
        await self.audit(
            f"feed {bucket}",
            "feed.unauthorised",
            bucket,
            {"reason": reason, "reason_code": code, "source": source},
        )

    async def _flush_unauthorised(self) -> None:
        """One row for the refusals the last window did not audit one by one."""
        suppressed = dict(sorted(self._suppressed.items()))
        sources = sorted(self._suppressed_sources)
        self._audited.clear()
        self._suppressed.clear()
        self._suppressed_sources.clear()
        if suppressed:
            await self.audit(
                "feed listener",
                "feed.unauthorised.suppressed",
                None,
                {
                    "per_minute": UNAUTHORISED_AUDITS_PER_MINUTE,
                    "suppressed": suppressed,
                    "sources": sources,
                },
            )


def _source(request: web.Request) -> str:
    """The request's remote address (the peer's: a proxy's, behind one), or "unknown"."""
    return request.remote or "unknown"


def _too_large() -> web.Response:
    return _error(
        413, f"body over {MAX_BODY_BYTES} bytes (the text itself: at most {MAX_TEXT_BYTES})"
    )


def _check_fields(body: dict[str, Any]) -> str | None:
    """None when the fields are usable, else what is wrong, naming the field."""
    if "marking" in body and "label" in body:
        return "marking, label: give one of them, not both"
    if "label" in body:
        if not isinstance(body["label"], str | dict):
            return "label: expected an ADatP-4774 label, as an XML string or its JSON object"
    elif not isinstance(body.get("marking"), str) or not body["marking"].strip():
        return 'marking: required (or label), a string such as "NATO SECRET"'
    if not isinstance(body.get("text"), str) or not body["text"].strip():
        return "text: required, a non-empty string"
    precedence = body.get("precedence", "ROUTINE")
    if not isinstance(precedence, str) or precedence.upper() not in Precedence.__members__:
        return f"precedence: {precedence!r} is not FLASH, IMMEDIATE, PRIORITY or ROUTINE"
    topics = body.get("topics", [])
    if not isinstance(topics, list) or not all(isinstance(t, str) and t for t in topics):
        return "topics: expected a list of strings"
    unknown = sorted(set(body) - {"marking", "label", "precedence", "text", "topics"})
    if unknown:
        return f"unknown field(s): {', '.join(unknown)}"
    return None
