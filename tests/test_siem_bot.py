"""The exporter as part of the bot: `[siem]` in the config, a real Synapse and a real
rsyslog. After the first sync the audit rows the bot wrote (its start, its rooms) and the
ones it writes from then on reach rsyslog; the metrics say so; the bot stops cleanly with
the exporter in it. How the exporter copes with a receiver that fails is the business of
tests/test_siem_rsyslog.py (no Matrix there)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.devtools.testca import TestCA
from bot.siem.wiring import formatter
from tests.bot_harness import BotEnv
from tests.siem_harness import Rsyslog, require_rsyslog

BOT_EXTRA_CONFIG = ""  # the [siem] section, written by the `receiver` fixture below


@pytest.fixture
def receiver(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Rsyslog]:
    """rsyslog, and the bot's [siem] section pointing at it (own_bot_env reads it after)."""
    require_rsyslog()
    ca = TestCA.create(tmp_path / "ca")
    cert, key = ca.issue("server", tmp_path / "certs")
    rsyslog = Rsyslog(tmp_path / "rsyslog", cert, key, ca.ca_path)
    rsyslog.start()
    monkeypatch.setattr(
        request.module,
        "BOT_EXTRA_CONFIG",
        f"""
[siem]
target = "127.0.0.1:{rsyslog.port}"
server_name = "localhost"
ca_file = "{ca.ca_path}"
format = "ocsf"
batch = 20
""",
    )
    try:
        yield rsyslog
    finally:
        rsyslog.stop()


async def test_the_bot_exports_its_audit_log_after_the_first_sync(
    receiver: Rsyslog, own_bot_env: BotEnv
) -> None:
    bot, store = own_bot_env.bot, own_bot_env.store
    assert bot is not None and store is not None
    render = formatter("ocsf", "level")

    def delivered() -> bool:
        cursor = store.siem_cursor()
        last = store.recent_audit(1)
        return bool(cursor and cursor.position and cursor.position.last_id == last[0].id)

    async def until_delivered() -> None:
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(delivered):
            assert time.monotonic() < deadline, "the bot's audit rows did not reach rsyslog"
            await asyncio.sleep(0.05)

    await until_delivered()
    await asyncio.to_thread(store.append_audit, "@someone:x", "test.after-start", None, {})
    await until_delivered()
    installation = store.siem_installation()
    rows = store.audit_after(0, 100_000)
    assert receiver.lines() == [render(r.entry, installation).body for r in rows]
    actions = {r.entry.action for r in rows}
    assert {"audit.keyed", "room.provisioned", "test.after-start"} <= actions
    sample = bot.metrics.registry.get_sample_value
    assert sample("liaison_siem_lag_rows") == 0
    age = sample("liaison_siem_last_delivery_seconds")
    assert age is not None and 0 <= age < 30
    started = time.monotonic()
    await own_bot_env.stop()  # the exporter stops with the bot
    assert time.monotonic() - started < 10
