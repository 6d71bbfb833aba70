"""The feed listener's defences (issue 14), over loopback against FeedListener with fake
ports: refused requests, unknown feeds, body limits and slow clients."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from bot.config import FeedConfig
from bot.metrics import Metrics
from bot.services import ingest
from bot.services.ingest import MAX_BODY_BYTES, UNAUTHORISED_AUDITS_PER_MINUTE, FeedListener
from bot.services.ports import Device
from bot.services.rooms import ManagedRoom
from commands.document import Document
from policy import MAX_TEXT_BYTES, make_room, parse_marking
from policy.ids import EventId, RoomId, RoomKey
from tests.fakes import NoMessenger

TOKEN = "sat-token-123"
NATO = ManagedRoom(
    RoomKey("nato-s"),
    "NATO SECRET liaison",
    make_room(parse_marking("NATO SECRET")),
    RoomId("!n:x"),
)


@dataclass
class Ports(NoMessenger):
    """The messenger port (sends and alerts; anything else fails, as NoMessenger's), the
    audit port (`audit`), and the one call of the relay engine the listener makes
    (`store_item`), recording."""

    audits: list[tuple[str, str, str | None, dict[str, Any]]] = field(default_factory=list)
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    now: float = 1000.0

    async def audit(
        self, actor: str, action: str, subject: str | None, detail: dict[str, Any]
    ) -> None:
        self.audits.append((actor, action, subject, detail))

    @property
    def user_id(self) -> str:
        return "@bot:x"

    async def send(
        self,
        room_id: str,
        content: dict[str, Any],
        tx_id: str | None = None,
        also_to: Sequence[Device] = (),
    ) -> EventId:
        self.sent.append((room_id, content))
        return EventId(f"$event{len(self.sent)}")

    async def alert_admins(self, document: Document, tx_id: str | None = None) -> None:
        pass

    async def store_item(self, source: Any, message: Any, origin: str) -> None:
        self.stored.append(message.text)

    def clock(self) -> float:
        return self.now


@dataclass
class Listener:
    ports: Ports
    listener: FeedListener
    metrics: Metrics
    url: str
    port: int

    async def post(
        self, key: str, body: bytes, token: str | None = TOKEN
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.url}/feeds/{key}", data=body, headers=headers) as response,
        ):
            return response.status, await response.json()

    def counted(self, audit: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "liaison_feed_unauthorised_total", {"audit": audit}
        )
        return value or 0.0


async def _listener(**timeouts: float) -> AsyncIterator[Listener]:
    ports = Ports()
    metrics = Metrics(lambda: None)
    listener = FeedListener(
        [FeedConfig(key=RoomKey("sat"), room=RoomKey("nato-s"), token_env="LIAISON_FEED_SAT")],
        {"sat": TOKEN},
        [],
        SimpleNamespace(by_key={"nato-s": NATO}),  # type: ignore[arg-type]  # RoomDirectory: only by_key
        ports,  # type: ignore[arg-type]  # RelayEngine: only store_item
        ports,
        ports.audit,
        metrics,
        clock=ports.clock,
        **timeouts,
    )
    await listener.start("127.0.0.1:0")  # any free port, held from the bind on
    port = listener.port
    try:
        yield Listener(ports, listener, metrics, f"http://127.0.0.1:{port}", port)
    finally:
        await listener.stop()


@pytest.fixture
async def feed() -> AsyncIterator[Listener]:
    async for listener in _listener():
        yield listener


@pytest.fixture
async def impatient_feed() -> AsyncIterator[Listener]:
    async for listener in _listener(header_timeout=0.5, body_timeout=0.5):
        yield listener


def item(text: str) -> bytes:
    return json.dumps({"marking": "NS", "text": text}).encode()  # ensure_ascii: \uXXXX


async def test_an_unknown_feed_is_answered_exactly_like_a_bad_token(
    feed: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module the listener compares with
    bad_token = await feed.post("sat", item("x"), "wrong")
    no_token = await feed.post("sat", item("x"), None)
    unknown = await feed.post("nope", item("x"), TOKEN)
    assert bad_token == no_token == unknown == (401, {"error": "bad or missing bearer token"})
    # the unknown feed's token was compared (in constant time) against something too
    assert len(compared) == 3 and len(compared[2][0]) == len(compared[2][1])
    good = await feed.post("sat", item("posted"), TOKEN)
    assert good[0] == 202 and feed.ports.stored == ["posted"]
    assert [(a[1], a[3]) for a in feed.ports.audits] == [
        (
            "feed.unauthorised",
            {
                "reason": "bad or missing token",
                "reason_code": "feed.token_invalid",
                "source": "127.0.0.1",
            },
        ),
        (
            "feed.unauthorised",
            {
                "reason": "bad or missing token",
                "reason_code": "feed.token_invalid",
                "source": "127.0.0.1",
            },
        ),
        (
            "feed.unauthorised",
            {"reason": "no such feed", "reason_code": "feed.unknown", "source": "127.0.0.1"},
        ),
    ]


async def test_a_feeds_spillage_row_names_the_remote_address(feed: Listener) -> None:
    """The SOC gets the audit (README "Audit to a SIEM"): it can tell which host posted."""
    body = json.dumps({"marking": "COSMIC TOP SECRET", "text": "never shown"}).encode()
    status, answer = await feed.post("sat", body)
    assert status == 422 and "spillage" in answer["error"]
    [(actor, action, subject, detail)] = feed.ports.audits
    assert (actor, action, subject) == ("feed sat", "spillage", "sat")
    assert detail["source"] == "127.0.0.1" and "never shown" not in json.dumps(detail)


async def test_refused_requests_are_audited_at_most_n_a_minute_per_key(feed: Listener) -> None:
    n = UNAUTHORISED_AUDITS_PER_MINUTE
    for _ in range(n + 15):
        assert (await feed.post("sat", item("x"), "wrong"))[0] == 401
    for _ in range(n + 2):
        assert (await feed.post("nope", item("x")))[0] == 401
    rows = feed.ports.audits
    assert [r[2] for r in rows] == ["sat"] * n + ["nope"] * n
    assert feed.counted("audited") == 2 * n and feed.counted("suppressed") == 17

    feed.ports.now += 61  # the next minute: one summary of what went unaudited, then rows
    assert (await feed.post("sat", item("x"), "wrong"))[0] == 401
    summary, row = rows[2 * n :]
    assert summary[1:] == (
        "feed.unauthorised.suppressed",
        None,
        {"per_minute": n, "suppressed": {"nope": 2, "sat": 15}, "sources": ["127.0.0.1"]},
    )
    assert row[1:3] == ("feed.unauthorised", "sat")

    for _ in range(n + 1):
        await feed.post("sat", item("x"), "wrong")
    assert len(rows) == 2 * n + 2 + (n - 1)
    await feed.listener.stop()  # what the last minute did not audit is summed up on stop
    assert rows[-1][1:] == (
        "feed.unauthorised.suppressed",
        None,
        {"per_minute": n, "suppressed": {"sat": 2}, "sources": ["127.0.0.1"]},
    )


async def test_many_distinct_keys_share_one_audit_allowance(feed: Listener) -> None:
    for i in range(ingest.UNAUTHORISED_KEYS_PER_MINUTE + 20):
        assert (await feed.post(f"k{i}", item("x")))[0] == 401
    await feed.post("bad.key!", item("x"))
    keys = [r[2] for r in feed.ports.audits]
    assert len(keys) == ingest.UNAUTHORISED_KEYS_PER_MINUTE + UNAUTHORISED_AUDITS_PER_MINUTE
    assert keys.count("*") == UNAUTHORISED_AUDITS_PER_MINUTE


async def test_any_text_within_the_text_limit_fits_the_body_limit(feed: Listener) -> None:
    # 40 000 bytes of Cyrillic: 120 000 bytes of JSON; 40 000 control bytes: 240 000
    cyrillic, control = "ж" * (MAX_TEXT_BYTES // 2), "\x01" * MAX_TEXT_BYTES
    assert len(item(cyrillic)) > 2 * MAX_TEXT_BYTES and len(item(control)) <= MAX_BODY_BYTES
    for text in (cyrillic, control):
        status, body = await feed.post("sat", item(text))
        assert status == 202, body
    assert feed.ports.stored == [cyrillic, control]

    status, body = await feed.post("sat", item("ж" * (MAX_TEXT_BYTES // 2) + "x"))
    assert (status, body) == (413, {"error": f"text over {MAX_TEXT_BYTES} bytes"})
    status, body = await feed.post("sat", b" " * (MAX_BODY_BYTES + 1))
    assert status == 413 and f"body over {MAX_BODY_BYTES} bytes" in body["error"]
    assert str(MAX_TEXT_BYTES) in body["error"]
    assert len(feed.ports.stored) == 2


async def _exchange(port: int, data: bytes) -> bytes:
    """Send `data` and read until the server closes the connection (10 s at most)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_a_client_that_never_finishes_its_headers_is_cut_off(
    impatient_feed: Listener,
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await _exchange(impatient_feed.port, b"POST /feeds/sat HTTP/1.1\r\nHost: x\r\n")
    assert answer == b"" and loop.time() - started < 5
    assert await _exchange(impatient_feed.port, b"") == b""  # idle from the start


async def test_a_body_that_never_arrives_gets_408(impatient_feed: Listener) -> None:
    head = (
        "POST /feeds/sat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n"
    )
    answer = await _exchange(impatient_feed.port, head.encode() + b'{"marking": ')
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"body not received within 0.5 s" in answer
    assert impatient_feed.ports.stored == []
