"""Syslog over TLS (RFC 5425) to the SIEM, one connection per batch, each batch confirmed.

Syslog has no acknowledgement: a message written to a socket may still be lost if the
receiver goes away before it reads it. So a batch counts as delivered only when the
receiver shows it read everything: after the batch we send TLS close_notify and wait for
the receiver's answer. rsyslog's `ossl` driver answers with its own close_notify, then
closes the connection; its `gtls` driver only closes it, so a clean close (FIN) after our
close_notify counts too. Either comes only after the receiver read up to our close_notify,
which follows the batch on the same ordered stream. Not a delivery:

- a reset (RST): the receiver closed with our data unread, or was gone;
- a close_notify or a close that arrived *before* ours (checked just before sending it): the
  receiver was shutting down on its own, not answering us;
- a timeout, a refused connection, a failed handshake, a TLS alert.

Each is a `DeliveryError` whose message says what happened, for the cursor's `last_error`.

What "read" means is the receiver's business: rsyslog with an in-memory queue can still
lose messages it read if it is killed before writing them (README "Audit to a SIEM" says
how to configure it).

TLS: the server name is sent (SNI) and the receiver's certificate must carry it and chain to
`ca_file` (or the system's CAs). With a client certificate the version is capped at TLS 1.2:
under TLS 1.3 the client's handshake completes before the server has checked the client's
certificate, so a rejected certificate shows up only afterwards (as an alert where the
close_notify should be) and an idle connection would look fine; under 1.2 the handshake
itself fails. The files are read again at each connection, so a certificate or CA file
replaced on disk is used at the next attempt, without a restart.

The socket is blocking, in a worker thread, with a timeout on each step, and TLS runs over
memory buffers (see `Delivery`): that gives exact control of the shutdown (our close_notify
sent alone, the answer told apart from an alert, a FIN or a reset), which asyncio's TLS
transport and `ssl.SSLSocket.unwrap` both hide. `Delivery.abort` cuts an attempt short from
the event loop when the exporter stops (a connect in progress still ends at its timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import select
import socket
import ssl
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

TIMEOUT_S = 10.0  # each of connect, handshake, a write, the close_notify's answer
# After the receiver's close_notify: how long to wait for its TCP close (rsyslog closes at
# once), to catch a reset (unread data) in time; a receiver that keeps TCP open is taken at
# its word when this passes.
CLOSE_WAIT_S = 1.0
# Reads before our close_notify that find data: a syslog receiver sends none, so a few
# suffice to pass its session tickets; one that keeps sending is not waited out.
EARLY_READS = 16
CHUNK = 64 * 1024  # the batch is encrypted and written this much at a time
RECEIVE = 64 * 1024


class Confirmation(StrEnum):
    """How the receiver showed it read the whole batch."""

    CLOSE_NOTIFY = "close_notify"  # it answered our close_notify with its own (rsyslog ossl)
    CLOSED = "closed"  # it closed the connection cleanly after our close_notify (gtls)


class DeliveryError(Exception):
    """The batch was not confirmed; the message says why (for `audit siem-status`)."""


@dataclass(frozen=True)
class TlsTarget:
    host: str
    port: int
    server_name: str
    ca_file: Path | None = None  # None: the system's trusted CAs
    cert_file: Path | None = None
    key_file: Path | None = None
    timeout: float = TIMEOUT_S

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _no_passphrase() -> bytes:
    raise ValueError("the key is encrypted (no passphrase can be given)")


def tls_context(target: TlsTarget) -> ssl.SSLContext:
    """A client context for `target`: certificate and host name checked, TLS 1.2 at least,
    at most 1.2 with a client certificate (see the module docstring)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if target.ca_file is not None:
        context.load_verify_locations(cafile=str(target.ca_file))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if target.cert_file is not None:
        context.load_cert_chain(
            str(target.cert_file),
            str(target.key_file) if target.key_file else None,
            password=_no_passphrase,
        )
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


class Delivery:
    """One attempt to deliver one batch over one connection.

    TLS runs over memory buffers (`ssl.MemoryBIO`) with the socket read and written here,
    not through `ssl.SSLSocket`: its `unwrap` reports success when the receiver answers our
    close_notify with a fatal alert (OpenSSL marks the connection shut down either way),
    which is exactly how a rejected client certificate shows under TLS 1.3. Reading the
    records ourselves tells a close_notify (SSLZeroReturnError) from an alert (SSLError), a
    clean close (the socket's EOF) and a reset."""

    def __init__(self, target: TlsTarget, payload: bytes) -> None:
        self.target = target
        self.payload = payload
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._aborted = False
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()

    def abort(self) -> None:
        """End the attempt from another thread: the blocked call fails at once."""
        with self._lock:
            self._aborted = True
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> Confirmation:
        """Connect, write the batch, confirm it; DeliveryError if it was not confirmed."""
        target = self.target
        try:
            context = tls_context(target)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise DeliveryError(f"cannot load the TLS files: {exc}") from None
        try:
            sock = self._connect()
            tls = context.wrap_bio(
                self._incoming, self._outgoing, server_hostname=target.server_name
            )
            self._handshake(sock, tls)
            for start in range(0, len(self.payload), CHUNK):
                tls.write(self.payload[start : start + CHUNK])
                self._flush(sock, "writing the batch")
            self._closed_early(sock, tls)
            try:
                tls.unwrap()  # queues our close_notify, then finds nothing to read yet
            except ssl.SSLWantReadError:
                pass
            else:  # it found the receiver's close_notify already: not an answer to ours
                raise DeliveryError(
                    f"{target.where} closed the connection before the batch was confirmed"
                )
            self._flush(sock, "sending close_notify")
            return self._answer(sock, tls)
        finally:
            with self._lock:
                if self._sock is not None:
                    self._sock.close()

    def _connect(self) -> socket.socket:
        target = self.target
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise DeliveryError(f"cannot resolve {target.host}: {exc.strerror}") from None
        failure: OSError | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            with self._lock:
                if self._aborted:
                    sock.close()
                    raise DeliveryError("stopped")
                self._sock = sock
            sock.settimeout(target.timeout)
            try:
                sock.connect(address)
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            # The close_notify is a small write after a large one: without this, Nagle's
            # algorithm holds it back for the batch's last ACK (40 ms each on Linux).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise DeliveryError(f"cannot connect to {target.where}: {_reason(failure)}")

    def _flush(self, sock: socket.socket, doing: str) -> None:
        """Send what TLS has written to its buffer."""
        data = self._outgoing.read()
        if not data:
            return
        try:
            sock.sendall(data)
        except OSError as exc:
            raise DeliveryError(f"{doing} to {self.target.where} failed: {_reason(exc)}") from None

    def _receive(self, sock: socket.socket, doing: str) -> bool:
        """Read what has come from the receiver into TLS's buffer; False at its EOF."""
        where = self.target.where
        try:
            data = sock.recv(RECEIVE)
        except BlockingIOError:
            raise  # nothing waiting (a non-blocking look)
        except TimeoutError:
            raise DeliveryError(f"{doing} with {where}: timed out") from None
        except OSError as exc:
            raise DeliveryError(f"{doing} with {where} failed: {_reason(exc)}") from None
        if data:
            self._incoming.write(data)
        return bool(data)

    def _handshake(self, sock: socket.socket, tls: ssl.SSLObject) -> None:
        where = self.target.where
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush(sock, "the TLS handshake")
                if not self._receive(sock, "the TLS handshake"):
                    raise DeliveryError(
                        f"TLS handshake with {where} failed: it closed the connection"
                    ) from None
            except ssl.SSLCertVerificationError as exc:
                with contextlib.suppress(DeliveryError):
                    self._flush(sock, "the TLS alert")  # tell it why, if it still listens
                raise DeliveryError(
                    f"TLS handshake with {where} failed: the receiver's certificate was "
                    f"refused ({exc.verify_message}; expected name {self.target.server_name!r})"
                ) from None
            except ssl.SSLError as exc:
                with contextlib.suppress(DeliveryError):
                    self._flush(sock, "the TLS alert")
                raise DeliveryError(f"TLS handshake with {where} failed: {_reason(exc)}") from None
        self._flush(sock, "the TLS handshake")
        with self._lock:
            if self._aborted:
                raise DeliveryError("stopped")

    def _closed_early(self, sock: socket.socket, tls: ssl.SSLObject) -> None:
        """Before our close_notify: has the receiver ended the connection already (its own
        close_notify, an alert, a close, a reset)? Then it was not answering us, and what it
        read is unknown. Records it sent meanwhile (TLS 1.3 session tickets) pass."""
        closed = False
        sock.setblocking(False)
        try:
            for _ in range(EARLY_READS):
                if not self._receive(sock, "reading before close_notify"):
                    closed = True
                    break
        except BlockingIOError:
            pass  # nothing more from it
        finally:
            sock.settimeout(self.target.timeout)
        if self._records(tls) is not None:  # an alert raises, naming it
            raise DeliveryError(
                f"{self.target.where} closed the connection before the batch was confirmed "
                "(its close_notify came first)"
            )
        if closed:
            raise DeliveryError(
                f"{self.target.where} closed the connection before the batch was confirmed"
            )

    def _records(self, tls: ssl.SSLObject) -> Confirmation | None:
        """Read the records received so far: CLOSE_NOTIFY once the receiver's close_notify
        is among them, None if not yet; an alert raises DeliveryError naming it.
        Application data (a syslog receiver sends none) is passed over."""
        while True:
            try:
                if not tls.read(RECEIVE):
                    return Confirmation.CLOSE_NOTIFY
            except ssl.SSLWantReadError:
                return None
            except ssl.SSLZeroReturnError:
                return Confirmation.CLOSE_NOTIFY
            except ssl.SSLError as exc:
                raise DeliveryError(
                    f"{self.target.where} did not confirm the batch: {_reason(exc)}"
                ) from None

    def _answer(self, sock: socket.socket, tls: ssl.SSLObject) -> Confirmation:
        """After our close_notify: the receiver's close_notify (then its TCP close, which
        must not be a reset), or a clean close; anything else is not a confirmation."""
        while True:
            if not self._receive(sock, "waiting for the answer to close_notify"):
                return Confirmation.CLOSED  # a clean close after our close_notify (gtls)
            if self._records(tls) is Confirmation.CLOSE_NOTIFY:
                self._wait_for_close(sock)
                return Confirmation.CLOSE_NOTIFY

    def _wait_for_close(self, sock: socket.socket) -> None:
        """After the receiver's close_notify: its TCP close is a FIN (fine) or a reset (it
        had unread data: not confirmed). Waits at most CLOSE_WAIT_S for either."""
        ready, _, _ = select.select([sock], [], [], CLOSE_WAIT_S)
        if not ready:
            return
        try:
            sock.recv(1)
        except ConnectionResetError:
            raise DeliveryError(
                f"{self.target.where} reset the connection after its close_notify: data "
                "was left unread"
            ) from None
        except OSError:
            return


def _reason(exc: BaseException | None) -> str:
    """An exception as a short reason: OpenSSL's reason or the system's message."""
    if exc is None:
        return "no address"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return exc.strerror or errno.errorcode[exc.errno]
    return str(exc) or type(exc).__name__


class TlsSyslog:
    """The SIEM's syslog-over-TLS receiver, as the exporter sees it."""

    def __init__(self, target: TlsTarget) -> None:
        self.target = target

    async def deliver(self, payload: bytes) -> Confirmation:
        """Deliver one batch (frames already joined) and confirm it, in a worker thread;
        DeliveryError if it was not confirmed. Cancelled, it aborts the attempt and waits
        for the thread, so nothing is left writing after the exporter stopped."""
        attempt = Delivery(self.target, payload)
        future = asyncio.get_running_loop().run_in_executor(None, attempt.run)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            attempt.abort()
            await asyncio.wait([future])
            raise
