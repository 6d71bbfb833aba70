"""`liaison-bot run` as an operator starts it: a real process, real signals, one device."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bot.devtools.devserver import DevServer, RegisteredUser
from tests.bot_harness import ROOMS, write_config
from tests.matrix_harness import MakeUser

SCRIPT = str(Path(sys.executable).parent / "liaison-bot")


def start(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [SCRIPT, "run", "--config", str(config)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"bot exited {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not logged in {timeout} s:\n{log.read_text()[-3000:]}")


def test_run_refuses_to_start_without_secrets(
    tmp_path: Path, synapse: DevServer, make_user: MakeUser
) -> None:
    config = tmp_path / "config.toml"
    write_config(config, synapse, make_user("liaison"), "@a:localhost", "@o:localhost", ROOMS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIAISON_TEST_")}
    result = subprocess.run(
        [SCRIPT, "run", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "missing secrets, refusing to start" in result.stderr
    assert "LIAISON_TEST_PICKLE_KEY" in result.stderr
    assert not (tmp_path / "bot.db").exists()


def test_run_logs_in_once_stops_on_sigterm_and_reuses_its_device(
    tmp_path: Path, synapse: DevServer, make_user: MakeUser
) -> None:
    bot_user = make_user("liaison")
    config = tmp_path / "config.toml"
    data_key = "run-cli-data-key-0123456789abcdef"
    write_config(
        config, synapse, bot_user, "@a:localhost", "@o:localhost", ROOMS, data_key=data_key
    )
    env = {
        **os.environ,
        "LIAISON_TEST_PASSWORD": bot_user.password,
        "LIAISON_TEST_PICKLE_KEY": "run-cli-pickle-key-0123456789abcdef",
        "LIAISON_TEST_DATA_KEY": data_key,
    }
    log = tmp_path / "bot.log"
    proc = start(config, env, log)
    try:
        wait_for_line(log, "first sync after", proc)
        assert "logged in as" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "stopped" in log.read_text()
        first_log = log.read_text()
        proc = start(config, env, log)
        wait_for_line(log, "reusing device", proc)
        wait_for_line(log, "first sync after", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    device = first_log.split("device ", 1)[1].split()[0]
    assert f"reusing device {device}" in log.read_text()
    devices = synapse.request("GET", "/_matrix/client/v3/devices", token=_login(synapse, bot_user))
    # the registration device, the bot's one device, and the token just made to look
    assert sum(1 for d in devices["devices"] if d["device_id"] == device) == 1
    assert len(devices["devices"]) <= 3


def _login(server: DevServer, user: RegisteredUser) -> str:
    response = server.request(
        "POST",
        "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user.user_id},
            "password": user.password,
        },
    )
    return str(response["access_token"])
