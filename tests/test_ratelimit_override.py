"""The README's prerequisite for the bot's account, checked against a real Synapse.

Every other test and benchmark runs on a homeserver with its rate limits lifted
(`bot.devtools.devserver`), so none of them would notice a production Synapse throttling the
bot. This one starts Synapse with its DEFAULT limits and shows both halves of what
"Operating it" tells the administrator: an account sending more than the burst is refused
with 429 M_LIMIT_EXCEEDED (and told to wait about 1 / 0.2 = 5 s a message, which turns a relay
burst of 50 into minutes), and after the documented admin API call
(`POST /_synapse/admin/v1/users/<user>/override_ratelimit` with
`{"messages_per_second": 0, "burst_count": 0}`, made with a server admin's token) the same
account's sends all succeed, back to back.
"""

from __future__ import annotations

import importlib
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.devtools.devserver import DevServer, DevServerError, RegisteredUser

# Synapse's defaults for rc_message (synapse/config/ratelimiting.py), as the README states them.
DEFAULT_PER_SECOND = 0.2
DEFAULT_BURST = 10
# The burst the README's throughput figure is measured with (`bench/throughput.py 50 5`).
RELAY_BURST = 50
# The documented body: 0 per second and 0 burst mean "no limit at all" for this account.
OVERRIDE = {"messages_per_second": 0, "burst_count": 0}


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


@pytest.fixture(scope="module")
def throttled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """A Synapse as an administrator installs it: Synapse's own rate limits, not the tests'.

    No gate: it plays no part in rate limits, and the rooms here are not managed."""
    server = DevServer(
        tmp_path_factory.mktemp("synapse-default-limits"), gate=False, default_rate_limits=True
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _send(server: DevServer, user: RegisteredUser, room_id: str, n: int) -> tuple[int, Any]:
    """One message, as the bot sends a relayed copy (PUT with a transaction id); returns the
    HTTP status and the JSON body, whatever they are (a 429 is the point, not an error)."""
    txn = f"t{n}-{secrets.token_hex(4)}"
    path = f"/_matrix/client/v3/rooms/{_quote(room_id)}/send/m.room.message/{txn}"
    body = json.dumps({"msgtype": "m.text", "body": f"message {n}"}).encode()
    request = urllib.request.Request(server.base_url + path, data=body, method="PUT")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {user.access_token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _room_of(server: DevServer, user: RegisteredUser) -> str:
    reply = server.request(
        "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"}, token=user.access_token
    )
    room_id: str = reply["room_id"]
    return room_id


def _send_until_refused(
    server: DevServer, user: RegisteredUser, room_id: str, at_most: int
) -> list[tuple[int, Any]]:
    """Send back to back until the first refusal (included) or `at_most` sends. Synapse holds
    each refusal back for half a second, so sending on after it would only slow the test."""
    results = []
    for n in range(at_most):
        results.append(_send(server, user, room_id, n))
        if results[-1][0] != 200:
            break
    return results


def test_a_default_synapse_throttles_a_burst_and_the_override_lifts_it(
    throttled: DevServer,
) -> None:
    server_admin = throttled.register("synadmin", f"pw-{secrets.token_hex(8)}", admin=True)
    bot = throttled.register("liaison", f"pw-{secrets.token_hex(8)}")  # not a server admin
    room_id = _room_of(throttled, bot)

    # Without the override: the burst passes, then Synapse refuses with M_LIMIT_EXCEEDED and
    # asks for about 1 / 0.2 = 5 s before the next message.
    started = time.monotonic()
    before = _send_until_refused(throttled, bot, room_id, DEFAULT_BURST + 10)
    elapsed = time.monotonic() - started
    status, refusal = before[-1]
    assert status == 429, f"a default Synapse let {len(before)} messages through back to back"
    assert refusal["errcode"] == "M_LIMIT_EXCEEDED", refusal
    # A token bucket: the burst of 10 (less what room creation's own events took), plus what
    # leaked back while these were sent, slow machine or not, and no more.
    passed = len(before) - 1
    assert 1 <= passed <= DEFAULT_BURST + elapsed * DEFAULT_PER_SECOND, (passed, elapsed)
    # The wait it asks for is one message's worth, 1 / 0.2 = 5 s, less the time gone since
    # the bucket filled: seconds a message, the figure the README's arithmetic stands on.
    wait = refusal["retry_after_ms"] / 1000
    assert 1 / DEFAULT_PER_SECOND - elapsed - 0.25 < wait <= 1 / DEFAULT_PER_SECOND + 0.1, (
        refusal,
        elapsed,
    )

    # The documented call: only a server admin may make it, and it answers with what it set.
    path = f"/_synapse/admin/v1/users/{_quote(bot.user_id)}/override_ratelimit"
    with pytest.raises(DevServerError, match=r"HTTP 403 M_FORBIDDEN"):
        throttled.request("POST", path, dict(OVERRIDE), token=bot.access_token)
    assert throttled.request("POST", path, dict(OVERRIDE), token=server_admin.access_token) == (
        OVERRIDE
    )
    assert throttled.request("GET", path, token=server_admin.access_token) == OVERRIDE

    # With it: the bucket the refused sends left empty no longer matters; a relay burst of
    # 50, sent back to back, all goes through.
    after = [_send(throttled, bot, room_id, n) for n in range(RELAY_BURST)]
    assert [status for status, _ in after] == [200] * RELAY_BURST, [
        body for status, body in after if status != 200
    ]
    assert all(body["event_id"].startswith("$") for _, body in after)

    # Another account on the same server is still limited: the override is per account.
    other = throttled.register("someone", f"pw-{secrets.token_hex(8)}")
    other_room = _room_of(throttled, other)
    others = _send_until_refused(throttled, other, other_room, DEFAULT_BURST + 10)
    assert others[-1][0] == 429, others


def test_the_default_limits_setting_is_written_and_taken_back(tmp_path: Path) -> None:
    """`default_rate_limits` only leaves Synapse's limits alone; the lifted limits every other
    test relies on come back when the same server directory is started without it."""
    yaml: Any = importlib.import_module("yaml")  # comes with Synapse, as in devserver
    server = DevServer(tmp_path / "hs", default_rate_limits=True, gate=False)
    server.workdir.mkdir()
    server._generate_config()
    server._patch_config()
    config = yaml.safe_load(server.config_path.read_text(encoding="utf-8"))
    assert "rc_message" not in config and "rc_joins" not in config
    server.default_rate_limits = False
    server._patch_config()
    config = yaml.safe_load(server.config_path.read_text(encoding="utf-8"))
    assert config["rc_message"]["per_second"] >= 1000, config["rc_message"]
