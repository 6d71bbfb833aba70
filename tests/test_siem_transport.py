"""The TLS transport's confirmation (bot/siem/transport.py) against small TLS servers on
loopback, one per way a receiver can end a connection: a batch is confirmed only by a
close_notify answered, or a clean close, after ours; a reset, an early close, silence, a
refused certificate or a wrong name is not a delivery. (The real receiver, rsyslog, is in
tests/test_siem_rsyslog.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.devtools.testca import TestCA
from bot.siem import transport
from bot.siem.transport import (
    Confirmation,
    Delivery,
    DeliveryError,
    TlsSyslog,
    TlsTarget,
    tls_context,
)

PAYLOAD = b"".join(b"%d %s" % (len(m), m) for m in (b"<86>1 - - - - - - one", b"<86>1 - - two"))


@dataclass
class Certs:
    ca: TestCA
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    other_ca: TestCA
    foreign_client: tuple[Path, Path]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    root = tmp_path_factory.mktemp("siem-tls")
    ca, other = TestCA.create(root / "ca"), TestCA.create(root / "other-ca")
    return Certs(
        ca,
        ca.issue("server", root / "certs"),
        ca.issue("client", root / "certs"),
        other,
        other.issue("foreign", root / "certs"),
    )


# What a server does once the handshake is done: given the TLS connection and the raw
# socket under it, it reads and ends the connection its own way.
Behaviour = Callable[[ssl.SSLSocket], None]


def read_to_close_notify(conn: ssl.SSLSocket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):  # b"" once the client's close_notify arrives
        data += chunk
    return data


@dataclass
class Server:
    """A one-connection-at-a-time TLS server in a thread, recording what it read."""

    context: ssl.SSLContext
    behaviour: Behaviour
    received: list[bytes] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sock: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return  # closed: the test is over
            raw.settimeout(5)
            try:
                conn = self.context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.errors.append(str(exc))
                raw.close()
                continue
            self.versions.append(str(conn.version()))
            try:
                self.behaviour(conn)
            except (ssl.SSLError, OSError) as exc:
                self.errors.append(str(exc))
            finally:
                conn.close()


@pytest.fixture
def serve(certs: Certs) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(behaviour: Behaviour, *, client_ca: Path | None = None) -> Server:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*certs.server)
        if client_ca is not None:  # ask for a client certificate from this CA
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(client_ca))
        server = Server(context, behaviour)
        threading.Thread(target=server.serve, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.sock.close()


def target(certs: Certs, port: int, **changes: object) -> TlsTarget:
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "server_name": "localhost",
        "ca_file": certs.ca.ca_path,
        "timeout": 2.0,
    }
    settings.update(changes)
    return TlsTarget(**settings)  # type: ignore[arg-type]  # the fields, as keywords


def test_an_answered_close_notify_confirms_the_batch(
    certs: Certs, serve: Callable[..., Server]
) -> None:
    read: list[bytes] = []

    def behaviour(conn: ssl.SSLSocket) -> None:
        read.append(read_to_close_notify(conn))
        conn.unwrap()

    server = serve(behaviour)
    assert Delivery(target(certs, server.port), PAYLOAD).run() is Confirmation.CLOSE_NOTIFY
    assert read == [PAYLOAD]
    assert server.versions == ["TLSv1.3"]


def test_a_clean_close_after_our_close_notify_confirms_it_too(
    certs: Certs, serve: Callable[..., Server]
) -> None:
    """rsyslog's gtls driver reads to our close_notify and closes without answering it."""
    read: list[bytes] = []

    def behaviour(conn: ssl.SSLSocket) -> None:
        read.append(read_to_close_notify(conn))
        # close() sends no close_notify: a plain FIN

    server = serve(behaviour)
    assert Delivery(target(certs, server.port), PAYLOAD).run() is Confirmation.CLOSED
    assert read == [PAYLOAD]


def _reset(conn: ssl.SSLSocket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_a_reset_is_not_a_delivery(certs: Certs, serve: Callable[..., Server]) -> None:
    """A receiver that goes away with our data unread resets the connection."""

    def behaviour(conn: ssl.SSLSocket) -> None:
        conn.recv(10)  # part of the batch, then gone
        _reset(conn)

    server = serve(behaviour)
    with pytest.raises(DeliveryError, match=r"127.0.0.1:"):  # at the write or the close
        Delivery(target(certs, server.port), PAYLOAD * 2000).run()


def test_a_reset_after_the_close_notify_is_not_a_delivery(
    certs: Certs, serve: Callable[..., Server]
) -> None:
    """It answers our close_notify but closes with data unread: reset, not confirmed."""

    def behaviour(conn: ssl.SSLSocket) -> None:
        read_to_close_notify(conn)
        conn.unwrap()
        raw = socket.socket(fileno=conn.detach())
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()

    server = serve(behaviour)
    # the reset arrives during our close_notify exchange or just after it: either way, reset
    with pytest.raises(DeliveryError, match=r"[Rr]eset"):
        Delivery(target(certs, server.port), PAYLOAD).run()


def test_a_close_notify_before_ours_is_not_an_answer(
    certs: Certs, serve: Callable[..., Server]
) -> None:
    """A receiver shutting down on its own says close_notify before it read our batch."""
    sent, finished = threading.Event(), threading.Event()

    def behaviour(conn: ssl.SSLSocket) -> None:
        conn.setblocking(False)
        with contextlib.suppress(ssl.SSLWantReadError):
            conn.unwrap()  # our close_notify is out; the client's answer is not in
        sent.set()
        finished.wait(5)  # open until the client is done: no reset to blur the order

    server = serve(behaviour)
    delivery = SlowDelivery(target(certs, server.port), PAYLOAD, sent)
    try:
        with pytest.raises(DeliveryError, match="closed the connection before the batch"):
            delivery.run()
    finally:
        finished.set()


class SlowDelivery(Delivery):
    """Writes its batch only once the server has sent its close_notify (on loopback it is
    then in our receive buffer): the order a receiver's own shutdown produces, made
    certain."""

    def __init__(self, target: TlsTarget, payload: bytes, sent: threading.Event) -> None:
        super().__init__(target, payload)
        self.sent = sent

    def _handshake(self, sock: socket.socket, tls: ssl.SSLObject) -> None:
        super()._handshake(sock, tls)
        assert self.sent.wait(5), "the server did not send its close_notify"


def test_silence_after_our_close_notify_times_out(
    certs: Certs, serve: Callable[..., Server]
) -> None:
    release = threading.Event()

    def behaviour(conn: ssl.SSLSocket) -> None:
        read_to_close_notify(conn)
        release.wait(10)  # neither answers nor closes

    server = serve(behaviour)
    started = time.monotonic()
    try:
        with pytest.raises(
            DeliveryError,
            match=r"waiting for the answer to close_notify with 127.0.0.1:.*timed out",
        ):
            Delivery(target(certs, server.port, timeout=0.5), PAYLOAD).run()
    finally:
        release.set()
    assert time.monotonic() - started < 3


def test_a_refused_connection_is_not_a_delivery(certs: Certs) -> None:
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    with pytest.raises(DeliveryError, match=r"cannot connect to 127.0.0.1:.*refused"):
        Delivery(target(certs, port), PAYLOAD).run()


def test_a_certificate_from_another_ca_is_refused_before_anything_is_written(
    certs: Certs, serve: Callable[..., Server]
) -> None:
    read: list[bytes] = []
    server = serve(lambda conn: read.append(read_to_close_notify(conn)))
    wrong = target(certs, server.port, ca_file=certs.other_ca.ca_path)
    with pytest.raises(DeliveryError, match=r"certificate was refused.*issuer"):
        Delivery(wrong, PAYLOAD).run()
    assert read == []


def test_a_server_name_the_certificate_does_not_carry_is_refused(
    certs: Certs, serve: Callable[..., Server]
) -> None:
    read: list[bytes] = []
    server = serve(lambda conn: read.append(read_to_close_notify(conn)))
    wrong = target(certs, server.port, server_name="siem.example.org")
    with pytest.raises(DeliveryError, match=r"certificate was refused.*siem.example.org"):
        Delivery(wrong, PAYLOAD).run()
    assert read == []


def test_unreadable_tls_files_are_reported_per_attempt(certs: Certs, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(DeliveryError, match="cannot load the TLS files"):
        Delivery(target(certs, 1, ca_file=junk), PAYLOAD).run()
    with pytest.raises(DeliveryError, match="cannot load the TLS files"):
        Delivery(target(certs, 1, ca_file=tmp_path / "gone.pem"), PAYLOAD).run()


def test_a_client_certificate_caps_the_version_at_tls_1_2(
    certs: Certs, serve: Callable[..., Server]
) -> None:
    read: list[bytes] = []

    def behaviour(conn: ssl.SSLSocket) -> None:
        read.append(read_to_close_notify(conn))
        conn.unwrap()

    server = serve(behaviour, client_ca=certs.ca.ca_path)
    cert, key = certs.client
    with_cert = target(certs, server.port, cert_file=cert, key_file=key)
    assert tls_context(with_cert).maximum_version is ssl.TLSVersion.TLSv1_2
    assert Delivery(with_cert, PAYLOAD).run() is Confirmation.CLOSE_NOTIFY
    assert server.versions == ["TLSv1.2"] and read == [PAYLOAD]


def test_a_rejected_client_certificate_fails_the_handshake_under_tls_1_2(
    certs: Certs, serve: Callable[..., Server]
) -> None:
    server = serve(lambda conn: None, client_ca=certs.ca.ca_path)
    cert, key = certs.foreign_client
    foreign = target(certs, server.port, cert_file=cert, key_file=key)
    with pytest.raises(DeliveryError, match=r"TLS handshake with 127.0.0.1:.* failed"):
        Delivery(foreign, PAYLOAD).run()


def test_under_tls_1_3_a_rejected_client_certificate_passes_the_handshake(
    certs: Certs, serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the cap: without it the handshake succeeds and the rejection comes after it (an
    alert, a close); the transport still does not take that for a delivery."""
    server = serve(lambda conn: None, client_ca=certs.ca.ca_path)
    cert, key = certs.foreign_client
    versions: list[str] = []
    capped = transport.tls_context
    handshaken = Delivery._handshake

    def uncapped(target: TlsTarget) -> ssl.SSLContext:
        context = capped(target)
        context.maximum_version = ssl.TLSVersion.TLSv1_3
        return context

    def handshake(self: Delivery, sock: socket.socket, tls: ssl.SSLObject) -> None:
        handshaken(self, sock, tls)
        versions.append(str(tls.version()))

    monkeypatch.setattr(transport, "tls_context", uncapped)
    monkeypatch.setattr(Delivery, "_handshake", handshake)
    foreign = target(certs, server.port, cert_file=cert, key_file=key)
    with pytest.raises(DeliveryError) as refused:
        Delivery(foreign, PAYLOAD).run()
    assert versions == ["TLSv1.3"]  # "connected": the refusal came after the handshake
    assert "handshake" not in str(refused.value)


def test_an_encrypted_client_key_is_refused_not_prompted_for(certs: Certs, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    cert, key = certs.client
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(DeliveryError, match=r"cannot load the TLS files.*encrypted"):
        Delivery(target(certs, 1, cert_file=cert, key_file=locked), PAYLOAD).run()


async def test_stopping_aborts_an_attempt_in_flight(
    certs: Certs, serve: Callable[..., Server]
) -> None:
    release, waiting = threading.Event(), threading.Event()

    def behaviour(conn: ssl.SSLSocket) -> None:
        read_to_close_notify(conn)
        waiting.set()  # the client now waits for an answer that does not come
        release.wait(10)

    server = serve(behaviour)
    sender = TlsSyslog(target(certs, server.port, timeout=30))
    attempt = asyncio.ensure_future(sender.deliver(PAYLOAD))
    assert await asyncio.to_thread(waiting.wait, 5)
    started = time.monotonic()
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    release.set()
    assert time.monotonic() - started < 2  # not the 30 s timeout
