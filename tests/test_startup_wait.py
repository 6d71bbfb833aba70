"""Start-up while the homeserver is down (issue 28): `liaison-bot run` waits for it with the
sync loop's backoff, one line per attempt, then logs in and answers; a stop during the wait
ends the process at once (exit 0); a refused login is not waited out. A real process and a
real Synapse, reached through a proxy that is started only once the bot is waiting (the
port refuses connections until then)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from bot.devtools.devserver import DevServer
from bot.devtools.proxy import CountingProxy
from tests.bot_harness import ROOMS, open_dm, talk, write_config
from tests.matrix_harness import MakeClient, MakeUser

REPO = Path(__file__).resolve().parent.parent
DATA_KEY = "wait-data-key-0123456789abcdef-0123"
PICKLE_KEY = "wait-pickle-key-0123456789abcdef-012"
WAITING = re.compile(
    r"homeserver (http://127\.0\.0\.1:\d+) unreachable \((\w+)(?: \d+)?\): "
    r"retrying in (\d+\.\d) s \(attempt (\d+)\)"
)


def bot_env(**secrets: str) -> dict[str, str]:
    """The environment of a bot process: this checkout first on the path (the console
    script may belong to another), the given secrets, nothing of the test run's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIAISON_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**env, **secrets}


def start_run(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "run", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
        )


def wait_for(log: Path, pattern: str | re.Pattern[str], proc: subprocess.Popen[bytes],
             timeout: float = 60) -> str:  # fmt: skip
    """The log once `pattern` is in it; fails at once when the process ends first."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = pattern in text if isinstance(pattern, str) else pattern.search(text)
        if found:
            return text
        if proc.poll() is not None:
            raise AssertionError(f"bot exited {proc.returncode}:\n{text[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not logged in {timeout} s:\n{text[-4000:]}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


@pytest.fixture
def closed_port() -> Iterator[socket.socket]:
    """A loopback port that refuses connections: bound (so nothing else takes it) but not
    listening. Close it to hand the port to a listener."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def bot_config(tmp_path: Path, synapse: DevServer, make_user: MakeUser, url: str,
               admin: str = "@a:localhost") -> tuple[Path, str]:  # fmt: skip
    """A bot's config whose homeserver url is `url`; returns it and the bot's password."""
    bot_user = make_user("liaison")
    config = tmp_path / "config.toml"
    write_config(config, synapse, bot_user, admin, "@o:localhost", ROOMS, data_key=DATA_KEY)
    text = config.read_text().replace(f'url = "{synapse.base_url}"', f'url = "{url}"')
    config.write_text(text)
    return config, bot_user.password


def attempts(text: str) -> list[tuple[str, float, int]]:
    return [(m[2], float(m[3]), int(m[4])) for m in WAITING.finditer(text)]


async def test_start_with_the_homeserver_down_waits_then_logs_in_and_answers(
    tmp_path: Path,
    synapse: DevServer,
    make_user: MakeUser,
    make_client: MakeClient,
    closed_port: socket.socket,
) -> None:
    port = closed_port.getsockname()[1]
    admin = make_user("admin")
    config, password = bot_config(
        tmp_path, synapse, make_user, f"http://127.0.0.1:{port}", admin.user_id
    )
    env = bot_env(
        LIAISON_TEST_PASSWORD=password,
        LIAISON_TEST_PICKLE_KEY=PICKLE_KEY,
        LIAISON_TEST_DATA_KEY=DATA_KEY,
    )
    log = tmp_path / "bot.log"
    proc = start_run(config, env, log)
    proxy = CountingProxy(synapse.base_url)
    try:
        text = await asyncio.to_thread(wait_for, log, "(attempt 3)", proc)
        seen = attempts(text)
        assert [(reason, n) for reason, _, n in seen] == [
            ("ConnectionRefused", 1),
            ("ConnectionRefused", 2),
            ("ConnectionRefused", 3),
        ]
        # the sync loop's backoff: 1, 2, 4 s, less up to a fifth of jitter
        for (_, delay, n), base in zip(seen, (1.0, 2.0, 4.0), strict=True):
            assert 0.8 * base - 0.05 <= delay <= base, (n, delay)
        assert "Traceback" not in text and "logged in as" not in text
        closed_port.close()
        await proxy.start(port)  # the homeserver is up
        await asyncio.to_thread(wait_for, log, "first sync after", proc, 90)
        text = log.read_text()
        assert f"homeserver http://127.0.0.1:{port} answers (attempt 4)" in text
        assert "logged in as" in text
        admin_client = await make_client(admin)
        dm = await open_dm(admin_client, config_user(config))
        await talk(admin_client, dm, "!whoami", "Roles: admin", timeout=60)
        assert await asyncio.to_thread(stop, proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        await proxy.stop()


def config_user(config: Path) -> str:
    match = re.search(r'user_id = "([^"]+)"', config.read_text())
    assert match is not None
    return match[1]


def test_a_stop_while_waiting_for_the_homeserver_exits_at_once(
    tmp_path: Path, synapse: DevServer, make_user: MakeUser, closed_port: socket.socket
) -> None:
    port = closed_port.getsockname()[1]
    config, password = bot_config(tmp_path, synapse, make_user, f"http://127.0.0.1:{port}")
    env = bot_env(
        LIAISON_TEST_PASSWORD=password,
        LIAISON_TEST_PICKLE_KEY=PICKLE_KEY,
        LIAISON_TEST_DATA_KEY=DATA_KEY,
    )
    log = tmp_path / "bot.log"
    proc = start_run(config, env, log)
    try:
        text = wait_for(log, "(attempt 4)", proc)
        delay = attempts(text)[-1][1]
        assert delay >= 6.4  # the wait the stop cuts short (8 s less jitter)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert time.monotonic() - started < delay - 1.5
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "Traceback" not in text and "(attempt 5)" not in text
    assert text.rstrip().endswith("stopped")


def test_a_refused_login_is_not_waited_out(
    tmp_path: Path, synapse: DevServer, make_user: MakeUser
) -> None:
    config, _ = bot_config(tmp_path, synapse, make_user, synapse.base_url)
    env = bot_env(
        LIAISON_TEST_PASSWORD="not-the-password",
        LIAISON_TEST_PICKLE_KEY=PICKLE_KEY,
        LIAISON_TEST_DATA_KEY=DATA_KEY,
    )
    log = tmp_path / "bot.log"
    proc = start_run(config, env, log)
    try:
        assert proc.wait(60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert f"the homeserver refused the login of {config_user(config)}: M_FORBIDDEN" in text
    assert "retrying" not in text and "Traceback" not in text
    assert "not-the-password" not in text


async def test_a_homeserver_answering_5xx_is_waited_for_too(
    tmp_path: Path, synapse: DevServer, make_user: MakeUser, closed_port: socket.socket
) -> None:
    """A reverse proxy up with Synapse behind it down answers 502: the same wait."""
    dead = f"http://127.0.0.1:{closed_port.getsockname()[1]}"
    proxy = CountingProxy(dead)  # answers 502 while its upstream refuses connections
    await proxy.start()
    config, password = bot_config(tmp_path, synapse, make_user, proxy.url)
    env = bot_env(
        LIAISON_TEST_PASSWORD=password,
        LIAISON_TEST_PICKLE_KEY=PICKLE_KEY,
        LIAISON_TEST_DATA_KEY=DATA_KEY,
    )
    log = tmp_path / "bot.log"
    proc = start_run(config, env, log)
    try:
        text = await asyncio.to_thread(wait_for, log, "(attempt 2)", proc)
        assert [(reason, n) for reason, _, n in attempts(text)] == [("HTTP", 1), ("HTTP", 2)]
        assert f"homeserver {proxy.url} unreachable (HTTP 502): retrying in" in text
        proxy.upstream = synapse.base_url  # Synapse is back behind the proxy
        await asyncio.to_thread(wait_for, log, "first sync after", proc, 90)
        assert "logged in as" in log.read_text()
        assert await asyncio.to_thread(stop, proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        await proxy.stop()


class FailingLogins(CountingProxy):
    """Forwards everything but the first `failures` login requests, which get a 502: a
    homeserver that answers its probe, then fails the login as a server going down does."""

    def __init__(self, upstream: str, failures: int) -> None:
        super().__init__(upstream)
        self.failures = failures

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/login") and request.method == "POST" and self.failures:
            self.failures -= 1
            return web.json_response({"errcode": "M_UNKNOWN", "error": "down"}, status=502)
        return await super()._forward(request)


async def test_a_login_failing_as_a_down_server_does_is_retried(
    tmp_path: Path, synapse: DevServer, make_user: MakeUser
) -> None:
    proxy = FailingLogins(synapse.base_url, failures=2)
    await proxy.start()
    config, password = bot_config(tmp_path, synapse, make_user, proxy.url)
    env = bot_env(
        LIAISON_TEST_PASSWORD=password,
        LIAISON_TEST_PICKLE_KEY=PICKLE_KEY,
        LIAISON_TEST_DATA_KEY=DATA_KEY,
    )
    log = tmp_path / "bot.log"
    proc = start_run(config, env, log)
    try:
        text = await asyncio.to_thread(wait_for, log, "first sync after", proc, 90)
        failed = re.findall(
            rf"homeserver {re.escape(proxy.url)} failed during the login \(HTTP 502\): "
            r"retrying in (\d+\.\d) s",
            text,
        )
        assert len(failed) == 2 and proxy.failures == 0
        assert text.count("logged in as") == 1
        assert await asyncio.to_thread(stop, proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        await proxy.stop()
