"""Federating throwaway homeservers: real Synapses that talk to each other over TLS on loopback.

Scenarios that span homeservers (a national server ``deu``, a NATO server ``nato``, relays
across them) stand on this, so it is checked on its own first: a room, an invite, a join and
a message cross between two servers with certificate verification on; a server outside a
`federation_whitelist` is kept out; and a server whose certificate comes from another CA
cannot federate at all, which shows that verification is really on.
"""

from __future__ import annotations

import itertools
import re
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from bot.devtools.devserver import DevServer, DevServerError, RegisteredUser, free_port
from bot.devtools.testca import TestCA

# Federation is waited for, not raced: this only bounds a failure, a pass takes about 1 s.
FEDERATION_DEADLINE = 30.0
# A refused invite can take Synapse a few retries to give up on; never the 30 s default.
INVITE_TIMEOUT = 120.0

_txn = itertools.count(1)


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _create_room(server: DevServer, user: RegisteredUser) -> str:
    reply = server.request(
        "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"}, token=user.access_token
    )
    room_id: str = reply["room_id"]
    return room_id


def _invite(server: DevServer, inviter: RegisteredUser, room_id: str, user_id: str) -> None:
    server.request(
        "POST",
        f"/_matrix/client/v3/rooms/{_quote(room_id)}/invite",
        {"user_id": user_id},
        token=inviter.access_token,
        timeout=INVITE_TIMEOUT,
    )


def _join(server: DevServer, user: RegisteredUser, room_id: str, via: str) -> None:
    server.request(
        "POST",
        f"/_matrix/client/v3/join/{_quote(room_id)}?server_name={_quote(via)}",
        {},
        token=user.access_token,
        timeout=INVITE_TIMEOUT,
    )


def _send_text(server: DevServer, user: RegisteredUser, room_id: str, body: str) -> str:
    reply = server.request(
        "PUT",
        f"/_matrix/client/v3/rooms/{_quote(room_id)}/send/m.room.message/t{next(_txn)}",
        {"msgtype": "m.text", "body": body},
        token=user.access_token,
    )
    event_id: str = reply["event_id"]
    return event_id


def _wait_for_text(
    server: DevServer, user: RegisteredUser, room_id: str, body: str
) -> dict[str, Any]:
    """The message `body` as `user` on `server` sees it, once federation has brought it."""
    path = f"/_matrix/client/v3/rooms/{_quote(room_id)}/messages?dir=b&limit=10"
    deadline = time.monotonic() + FEDERATION_DEADLINE
    seen: list[Any] = []
    while time.monotonic() < deadline:
        chunk = server.request("GET", path, token=user.access_token)["chunk"]
        for event in chunk:
            if event.get("type") == "m.room.message" and event["content"].get("body") == body:
                found: dict[str, Any] = event
                return found
        seen = [event.get("content", {}).get("body", event.get("type")) for event in chunk]
        time.sleep(0.1)
    raise AssertionError(
        f"{body!r} did not reach {server.server_name} within {FEDERATION_DEADLINE:g} s; "
        f"the room there holds {seen}\n{server.log_tail()}"
    )


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA
) -> Iterator[dict[str, DevServer]]:
    """``deu`` federates only with ``nato``; ``nato`` with anyone; ``other`` (same CA) is left
    out of deu's whitelist; ``rogue`` has a certificate from a CA nobody trusts."""
    nato = DevServer(tmp_path_factory.mktemp("nato"), federation=test_ca)
    deu_port = free_port()
    deu = DevServer(
        tmp_path_factory.mktemp("deu"),
        federation=test_ca,
        federation_port=deu_port,
        federation_whitelist=[f"127.0.0.1:{deu_port}", nato.server_name],
    )
    other = DevServer(tmp_path_factory.mktemp("other"), federation=test_ca)
    rogue_ca = TestCA.create(tmp_path_factory.mktemp("rogue-ca"))
    rogue = DevServer(tmp_path_factory.mktemp("rogue"), federation=rogue_ca)
    started = {"deu": deu, "nato": nato, "other": other, "rogue": rogue}
    try:
        # In parallel: each start is mostly a Python process importing Synapse.
        with ThreadPoolExecutor(len(started)) as pool:
            list(pool.map(lambda server: server.start(), started.values()))
        yield started
    finally:
        for server in started.values():
            server.stop()


def test_ca_is_reused_and_issues_loopback_certificates(tmp_path: Path) -> None:
    ca = TestCA.create(tmp_path / "ca")
    assert TestCA.create(tmp_path / "ca").ca_path.read_bytes() == ca.ca_path.read_bytes()

    cert_path, key_path = ca.issue("srv", tmp_path / "srv")
    assert key_path.stat().st_mode & 0o077 == 0
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    issuer = x509.load_pem_x509_certificate(ca.ca_path.read_bytes())
    cert.verify_directly_issued_by(issuer)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    with pytest.raises(ValueError, match="overwrite"):
        ca.issue("ca", tmp_path / "ca")


def test_without_federation_nothing_changes(tmp_path: Path, test_ca: TestCA) -> None:
    plain = DevServer(tmp_path / "plain")
    assert plain.server_name == "localhost"
    assert plain.federation is None and plain.federation_port is None
    assert plain.federation_url is None
    with pytest.raises(ValueError, match="federation=TestCA"):
        DevServer(tmp_path / "x", federation_whitelist=["127.0.0.1:1"])
    with pytest.raises(ValueError, match="federating DevServer"):
        DevServer(tmp_path / "y", "localhost", federation=test_ca)


def test_invite_join_and_message_cross_servers(servers: dict[str, DevServer]) -> None:
    deu, nato = servers["deu"], servers["nato"]
    assert deu.server_name == f"127.0.0.1:{deu.federation_port}"
    alice = deu.register("alice", "alice-pw")
    bob = nato.register("bob", "bob-pw")
    assert alice.user_id == f"@alice:{deu.server_name}"
    assert bob.user_id == f"@bob:{nato.server_name}"

    started = time.monotonic()
    room_id = _create_room(deu, alice)
    _invite(deu, alice, room_id, bob.user_id)
    _join(nato, bob, room_id, deu.server_name)
    _send_text(deu, alice, room_id, "hello from deu")
    event = _wait_for_text(nato, bob, room_id, "hello from deu")
    assert event["sender"] == alice.user_id
    print(f"invite, join and message crossed in {time.monotonic() - started:.2f} s")

    # The other way, too.
    _send_text(nato, bob, room_id, "hello from nato")
    assert _wait_for_text(deu, alice, room_id, "hello from nato")["sender"] == bob.user_id

    # A restart keeps the name, the keys and the room: federation picks up where it was.
    name = nato.server_name
    nato.stop()
    nato.start()
    assert nato.server_name == name
    _send_text(deu, alice, room_id, "after the restart")
    _wait_for_text(nato, bob, room_id, "after the restart")


def test_whitelist_keeps_other_servers_out(servers: dict[str, DevServer]) -> None:
    deu, nato, other = servers["deu"], servers["nato"], servers["other"]
    carol = deu.register("carol", "carol-pw")
    dave = nato.register("dave", "dave-pw")
    olga = other.register("olga", "olga-pw")

    # `other` federates fine with a server that has no whitelist...
    nato_room = _create_room(nato, dave)
    _invite(nato, dave, nato_room, olga.user_id)
    _join(other, olga, nato_room, nato.server_name)
    # ...but deu does not talk to it, either way.
    deu_room = _create_room(deu, carol)
    denied = "HTTP 403 M_FORBIDDEN: Federation denied with " + re.escape(other.server_name)
    with pytest.raises(DevServerError, match=denied):
        _invite(deu, carol, deu_room, olga.user_id)
    other_room = _create_room(other, olga)
    with pytest.raises(DevServerError, match=denied):
        _invite(other, olga, other_room, carol.user_id)


def test_certificate_from_an_unknown_ca_is_refused(servers: dict[str, DevServer]) -> None:
    nato, rogue = servers["nato"], servers["rogue"]
    erin = nato.register("erin", "erin-pw")
    mallory = rogue.register("mallory", "mallory-pw")
    room_id = _create_room(nato, erin)
    with pytest.raises(DevServerError, match=r"HTTP 502 .*Can't connect to server"):
        _invite(nato, erin, room_id, mallory.user_id)
    assert "certificate verify failed" in nato.log_path.read_text(encoding="utf-8")
