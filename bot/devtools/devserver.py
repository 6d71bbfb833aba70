"""A throwaway Synapse homeserver for the integration tests and the demo.

The bot's promises (E2EE, membership gates, relay under clearance rules) only mean something
against a real homeserver, so the tests start a real Synapse rather than a mock. It runs as
a child process on a free loopback port with SQLite in a private directory, with every rate
limit lifted (tests register, log in and send far faster than a person would; unless
``default_rate_limits=True`` keeps Synapse's own) and federation off, unless it is given a
test CA (`bot.devtools.testca.TestCA`): then it federates, see below. It loads the
homeserver gate (`bot.gate`) unless told not to, so every integration test runs with
server-side enforcement: a bot started against it (`botenv.write_config`) adds its register
to the gate's registers file. Stopping keeps the directory, so a test can take the server
down and bring it back with its users and rooms intact; only `__exit__` of a server that
made its own directory deletes it.

Federation (``DevServer(..., federation=ca)``) is for scenarios that span homeservers, such
as a national server and a NATO server with relays across them. Such a server is called
``127.0.0.1:<federation port>`` (user ids like ``@alice:127.0.0.1:40123``), an IP literal so
that no DNS, SRV or ``.well-known`` lookup is involved, and it listens for federation with TLS
on that port, with a certificate from the CA. Certificate verification stays on, as in the
product: every server trusts only the test CA (`federation_custom_ca_list`). Two settings
lift loopback restrictions meant for the open internet: ``federation_ip_range_blacklist: []``
(Synapse refuses to federate with private addresses such as 127.0.0.1 by default, and
``ip_range_whitelist`` does not lift that for IP-literal server names) and
``trusted_key_servers: []`` (keys are fetched from each server itself, not matrix.org). An
optional ``federation_whitelist`` becomes ``federation_domain_whitelist``.

Synchronous on purpose: it is driven from pytest fixtures and from a CLI command, and its few
HTTP calls (register, make room admin) are admin chores, not part of the bot's event loop.
Synapse and PyYAML are imported lazily (PyYAML) or only in the child process (Synapse), so
importing this module costs nothing where the test extra is not installed.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import importlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: this module must stay cheap to import
    from bot.devtools.testca import TestCA

CONFIG_NAME = "homeserver.yaml"
LOG_CONFIG_NAME = "log.config"
LOG_NAME = "homeserver.log"
STDIO_NAME = "stdio.log"
# The federation listener's certificate and key (`TestCA.issue` adds .pem and .key).
TLS_NAME = "federation-tls"
# The gate's registers file (bot.gate): bots started against this server add theirs to it.
GATE_REGISTERS_NAME = "gate-registers.json"

# Generous enough that no test or demo ever meets a 429; Synapse reads each as a float/int.
_UNLIMITED = {"per_second": 10000, "burst_count": 100000}
# Every rate limiter Synapse 1.163 reads (synapse/config/ratelimiting.py); nested ones are
# dictionaries of limiters. rc_federation has a different shape: see _FEDERATION_RATE_LIMIT.
_RATE_LIMITS: dict[str, Any] = {
    "rc_message": _UNLIMITED,
    "rc_registration": _UNLIMITED,
    "rc_registration_token_validity": _UNLIMITED,
    "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED, "failed_attempts": _UNLIMITED},
    "rc_admin_redaction": _UNLIMITED,
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_joins_per_room": _UNLIMITED,
    "rc_key_requests": _UNLIMITED,
    "rc_3pid_validation": _UNLIMITED,
    "rc_invites": {"per_room": _UNLIMITED, "per_user": _UNLIMITED, "per_issuer": _UNLIMITED},
    "rc_third_party_invite": _UNLIMITED,
    "rc_media_create": _UNLIMITED,
    "rc_presence": {"per_user": _UNLIMITED},
    "rc_delayed_event_mgmt": _UNLIMITED,
    "rc_room_creation": _UNLIMITED,
    "rc_reports": _UNLIMITED,
    "rc_user_directory": _UNLIMITED,
    "rc_profile": _UNLIMITED,
}
# How much a federating server accepts from each other server (synapse/config/ratelimiting.py,
# FederationRatelimitSettings): the defaults delay requests beyond 10 a second and run only 3
# at once, which would slow relays in tests; set only when the server federates.
_FEDERATION_RATE_LIMIT: dict[str, int] = {
    "window_size": 1000,
    "sleep_limit": 100000,
    "sleep_delay": 0,
    "reject_limit": 1000000,
    "concurrent": 1000,
}
# Keys this module sets only on a federating server, removed again when it does not federate.
_FEDERATION_KEYS = (
    "tls_certificate_path",
    "tls_private_key_path",
    "federation_custom_ca_list",
    "federation_ip_range_blacklist",
    "federation_domain_whitelist",
    "federation_verify_certificates",
    "rc_federation",
    "federation",
)

# A plain, unbuffered file handler: the generated config buffers INFO lines for up to 5 s,
# which would hide the lines that explain a failed start.
_LOG_CONFIG = """\
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: {path}
    encoding: utf8
loggers:
  synapse.storage.SQL:
    level: INFO
  twisted:
    level: WARNING
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
"""


class DevServerError(RuntimeError):
    """The throwaway homeserver did not start, or refused an admin request."""


@dataclass(frozen=True)
class RegisteredUser:
    user_id: str
    access_token: str
    device_id: str
    password: str


def free_port() -> int:
    """A loopback port nobody listens on right now (racy, but good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Servers still running when the interpreter exits (a test run aborted with Ctrl-C, a demo
# that raised) would otherwise outlive it, because they run in their own session.
_RUNNING: weakref.WeakSet[DevServer] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop(timeout=5)


class DevServer:
    """One Synapse process and its data directory; see the module docstring for why."""

    def __init__(
        self,
        workdir: Path | None = None,
        server_name: str | None = None,
        port: int | None = None,
        *,
        gate: bool = True,
        federation: TestCA | None = None,
        federation_port: int | None = None,
        federation_whitelist: Sequence[str] | None = None,
        default_rate_limits: bool = False,
    ) -> None:
        """`server_name` defaults to ``localhost``; a federating server (`federation` given)
        names itself ``127.0.0.1:<federation_port>`` and refuses any other name.

        `default_rate_limits=True` keeps Synapse's own rate limits (``rc_message``: 0.2
        messages a second, a burst of 10; and the others) instead of lifting them: for the
        test that the README's prerequisite, exempting the bot's account through the admin
        API, is what a production homeserver needs. Like the options above, it is applied at
        every start.

        `federation_whitelist`, if given, lists the server names this one federates with
        (Synapse's ``federation_domain_whitelist``); it is read at every start, so a test can
        change the attribute and restart the server.
        """
        if federation is None and (federation_port, federation_whitelist) != (None, None):
            raise ValueError("federation_port and federation_whitelist need federation=TestCA")
        self.gate = gate
        self.default_rate_limits = default_rate_limits
        self.federation = federation
        self._owns_workdir = workdir is None
        self.workdir: Path = (
            Path(tempfile.mkdtemp(prefix="liaison-synapse-")) if workdir is None else workdir
        )
        # Chosen once, so that clients holding base_url reconnect after a stop()/start(), and
        # (federation port, hence server name) so that user ids and rooms survive a restart.
        self.port: int = port if port is not None else free_port()
        self.federation_port: int | None = None
        if federation is not None:
            self.federation_port = federation_port if federation_port is not None else free_port()
            federated_name = f"127.0.0.1:{self.federation_port}"
            if server_name is not None and server_name != federated_name:
                raise ValueError(
                    f"a federating DevServer is named {federated_name!r} (an IP literal its "
                    f"certificate covers), not {server_name!r}"
                )
            server_name = federated_name
        self.server_name: str = server_name if server_name is not None else "localhost"
        self.federation_whitelist: list[str] | None = (
            None if federation_whitelist is None else list(federation_whitelist)
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._shared_secret: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def federation_url(self) -> str | None:
        """Where other servers reach this one (HTTPS), or None if it does not federate."""
        if self.federation_port is None:
            return None
        return f"https://127.0.0.1:{self.federation_port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / CONFIG_NAME

    @property
    def log_path(self) -> Path:
        return self.workdir / LOG_NAME

    def log_since(self, offset: int) -> str:
        """What Synapse logged after `offset` bytes of its log (`log_path.stat().st_size`
        before the request): its handler is unbuffered, so a line logged while a request
        was served is there once the answer has arrived."""
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", errors="replace")

    @property
    def gate_registers_path(self) -> Path:
        return self.workdir / GATE_REGISTERS_NAME

    def add_register(self, entry: Mapping[str, Any], data_key: str | None = None) -> None:
        """Let the gate enforce one more bot's register (or replace that bot's entry).

        `data_key`, the bot's data key, gives the entry its `register_key` (the public key
        the bot's rows verify with; the data key itself is not written), so the gate refuses
        rows that do not verify, as a production gate set up by `gate synapse-config` does.
        An entry given without either is written as it is: the gate then reads its rows
        unverified and logs that it does.

        Written whole to a new file and renamed over the old, so the gate, which rereads the
        file when it changes, never sees half of it.
        """
        entry = dict(entry)
        if data_key is not None:
            from bot.storage.store import register_public_key  # keeps this module cheap

            key = register_public_key(data_key)
            if entry.setdefault("register_key", key) != key:
                raise DevServerError(
                    f"register of {entry['bot_user_id']}: its register_key differs from "
                    "the one data_key gives"
                )
        path = self.gate_registers_path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            entries: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            entries = []
        entries = [e for e in entries if e.get("bot_user_id") != entry["bot_user_id"]]
        entries.append(entry)
        self._write_registers(entries)

    def remove_register(self, bot_user_id: str) -> None:
        """Stop the gate enforcing that bot's register (written as add_register writes)."""
        path = self.gate_registers_path
        entries: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
        kept = [e for e in entries if e.get("bot_user_id") != bot_user_id]
        if len(kept) == len(entries):
            raise DevServerError(f"no register of {bot_user_id} in {path}")
        self._write_registers(kept)

    def _write_registers(self, entries: list[dict[str, Any]]) -> None:
        tmp = self.gate_registers_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=1), encoding="utf-8")
        os.replace(tmp, self.gate_registers_path)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Start Synapse and return once it answers client requests."""
        if self.is_running():
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            self._generate_config()
        self._patch_config()
        stdio = (self.workdir / STDIO_NAME).open("ab")
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "synapse.app.homeserver",
                    "--config-path",
                    str(self.config_path),
                ],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for the demo must not kill the homeserver
                # before the bot has logged off; stop() and the atexit hook end it instead.
                start_new_session=True,
            )
        finally:
            stdio.close()
        _RUNNING.add(self)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15) -> None:
        """Stop Synapse, keeping its data; a no-op when it is not running."""
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> DevServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The end of Synapse's log and of its stdout/stderr, for error messages."""
        parts = []
        for path in (self.log_path, self.workdir / STDIO_NAME):
            if path.exists():
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()
                if text:
                    parts.append(f"--- {path.name} (last {lines} lines) ---")
                    parts.extend(text[-lines:])
        return "\n".join(parts) or "(no Synapse output)"

    def _generate_config(self) -> None:
        cmd = [
            sys.executable, "-m", "synapse.app.homeserver", "--generate-config",
            "--server-name", self.server_name, "--config-path", str(self.config_path),
            "--data-directory", str(self.workdir), "--report-stats=no",
        ]  # fmt: skip
        result = subprocess.run(
            cmd, cwd=self.workdir, capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            raise DevServerError(
                f"synapse --generate-config failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )

    def _patch_config(self) -> None:
        """Make the generated config loopback-only, fast and (unless `default_rate_limits`)
        unthrottled; idempotent.

        Federation is set up here (or taken out again) at every start, so the config always
        matches the constructor's options.
        """
        # PyYAML comes with Synapse; looked up by name so no stubs are needed to type-check.
        yaml: Any = importlib.import_module("yaml")

        config: dict[str, Any] = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        log_config = self.workdir / LOG_CONFIG_NAME
        log_config.write_text(_LOG_CONFIG.format(path=json.dumps(str(self.log_path))))
        secret = config.get("registration_shared_secret") or secrets.token_urlsafe(32)
        listeners: list[dict[str, Any]] = [
            {
                "port": self.port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ]
        for key in _FEDERATION_KEYS:
            config.pop(key, None)
        if self.federation is not None:
            listeners.append(
                {
                    "port": self.federation_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "x_forwarded": False,
                    # "federation" also serves /_matrix/key, which the other servers fetch
                    # this server's signing keys from (there is no key server).
                    "resources": [{"names": ["federation"], "compress": False}],
                }
            )
            # Issued afresh at every start, so it always matches the CA the others trust.
            cert_path, key_path = self.federation.issue(TLS_NAME, self.workdir)
            config.update(
                {
                    "tls_certificate_path": str(cert_path),
                    "tls_private_key_path": str(key_path),
                    "federation_custom_ca_list": [str(self.federation.ca_path)],
                    # Synapse's default, written out: the product never turns it off.
                    "federation_verify_certificates": True,
                    # Not ip_range_whitelist: see the module docstring.
                    "federation_ip_range_blacklist": [],
                    "rc_federation": dict(_FEDERATION_RATE_LIMIT),
                    # After a peer's outage, retry it within seconds, not Synapse's 10 min
                    # (an outage test waits for the backlog; production keeps the default).
                    "federation": {
                        "destination_min_retry_interval": "1s",
                        "destination_retry_multiplier": 1.5,
                        "destination_max_retry_interval": "5s",
                    },
                }
            )
            if self.federation_whitelist is not None:
                config["federation_domain_whitelist"] = list(self.federation_whitelist)
        config.update(
            {
                "server_name": self.server_name,
                "listeners": listeners,
                "database": {
                    "name": "sqlite3",
                    "args": {"database": str(self.workdir / "homeserver.db")},
                },
                "media_store_path": str(self.workdir / "media_store"),
                "log_config": str(log_config),
                "signing_key_path": str(self.workdir / f"{self.server_name}.signing.key"),
                "registration_shared_secret": secret,
                "enable_registration": False,
                "trusted_key_servers": [],
                "suppress_key_server_warning": True,
                "report_stats": False,
                "enable_metrics": False,
                "bcrypt_rounds": 4,
                "presence": {"enabled": False},
                "url_preview_enabled": False,
            }
        )
        # Lifted unless the caller asked for Synapse's defaults; taken out again then, so a
        # server restarted with the other setting is not left with the old one.
        for key in _RATE_LIMITS:
            config.pop(key, None)
        if not self.default_rate_limits:
            config.update(_RATE_LIMITS)
        if self.gate:
            config["modules"] = [
                {
                    "module": "bot.gate.LiaisonGate",
                    "config": {"registers_file": str(self.gate_registers_path)},
                }
            ]
        else:
            config.pop("modules", None)
        # A pid file left by a killed server would only confuse the next start.
        config.pop("pid_file", None)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self._shared_secret = secret

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise DevServerError(
                    f"Synapse exited with status {code} while starting on {self.base_url}\n"
                    f"{self.log_tail()}"
                )
            try:
                self.request("GET", "/_matrix/client/versions", timeout=2)
                self._check_federation_listener()
                return
            except DevServerError as exc:
                last_error = str(exc)
            time.sleep(0.1)
        raise DevServerError(
            f"Synapse did not answer on {self.base_url} within {timeout:g} s "
            f"({last_error})\n{self.log_tail()}"
        )

    def _check_federation_listener(self) -> None:
        """Fetch the federation version over TLS as another server would: trusting only the
        test CA and checking the certificate's IP, so a bad certificate fails the start
        with a clear error instead of a test with a federation timeout."""
        if self.federation is None or self.federation_url is None:
            return
        context = ssl.create_default_context(cafile=str(self.federation.ca_path))
        path = "/_matrix/federation/v1/version"
        try:
            with urllib.request.urlopen(
                self.federation_url + path, timeout=2, context=context
            ) as response:
                response.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DevServerError(f"GET {self.federation_url}{path} -> {reason}") from exc

    # -- admin chores ----------------------------------------------------------------------

    def register(
        self, localpart: str, password: str, admin: bool = False, *, logout: bool = False
    ) -> RegisteredUser:
        """Create a user through the shared-secret admin API (open registration is off).

        The API also logs the user in, which creates a device; `logout=True` ends that
        session again, for tests that count a user's devices.
        """
        if self._shared_secret is None:
            raise DevServerError("start() the server before registering users")
        nonce = self.request("GET", "/_synapse/admin/v1/register")["nonce"]
        mac = hmac.new(self._shared_secret.encode(), digestmod=hashlib.sha1)
        for part in (nonce.encode(), localpart.encode(), password.encode()):
            mac.update(part)
            mac.update(b"\x00")
        mac.update(b"admin" if admin else b"notadmin")
        body = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        reply = self.request("POST", "/_synapse/admin/v1/register", body)
        user = RegisteredUser(
            user_id=reply["user_id"],
            access_token=reply["access_token"],
            device_id=reply["device_id"],
            password=password,
        )
        if logout:
            self.request("POST", "/_matrix/client/v3/logout", {}, token=user.access_token)
        return user

    def make_room_admin(self, admin_token: str, room_id: str, user_id: str) -> None:
        """Give user_id the power level of the room's most powerful local member.

        Synapse requires a server admin's token and a local member who can still change
        the power levels (it sends the change as that member), and invites user_id if they
        are not already in a non-public room.
        """
        path = f"/_synapse/admin/v1/rooms/{urllib.parse.quote(room_id, safe='')}/make_room_admin"
        self.request("POST", path, {"user_id": user_id}, token=admin_token)

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """Call the homeserver directly (admin chores, test assertions), JSON in and out.

        Every failure becomes a DevServerError naming the request, the HTTP status and the
        Matrix errcode, so that a failing test says what the server refused and why.
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw_error = exc.read().decode("utf-8", errors="replace")
            try:
                err = json.loads(raw_error)
                detail = f"{err.get('errcode', '?')}: {err.get('error', raw_error)}"
            except ValueError:
                detail = raw_error[:500]
            raise DevServerError(f"{method} {path} -> HTTP {exc.code} {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DevServerError(f"{method} {path} -> {reason}") from exc
        reply: dict[str, Any] = json.loads(raw) if raw else {}
        return reply


__all__ = ["DevServer", "DevServerError", "RegisteredUser", "free_port"]
