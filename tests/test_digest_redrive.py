"""A digest run left in POSTING is re-driven: the bot process dies after claiming a window
(before the send) or after the send (before recording it); after a restart the room holds
that window's digest exactly once and the run is recorded as posted with its event id.

The crash is injected the way tests/test_relay_crash.py does it, with a `sitecustomize`
loaded only into the bot process; here it is written into the test's own folder, so the
runtime code holds no test hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nio import RoomMessageNotice
from sqlalchemy import select

from bot.devtools.devserver import DevServer
from bot.matrix.gateway import MatrixError
from bot.services.digest import part_txn_ids
from bot.services.ports import Device
from bot.storage import AuditNote, DigestRunRow, IntelItemRow, RunState, Store
from policy import Precedence
from policy.ids import EventId
from tests.bot_harness import eventually, process_scenario
from tests.matrix_harness import MakeClient, MakeUser
from tests.pg import fresh_schema
from tests.test_digest_logic import T0, Clock, FakeMessenger, digest_service

CRASH_EXIT = 70
CRASH_HOOK = textwrap.dedent(
    """
    import os

    from bot.storage import Store

    _point = os.environ.get("LIAISON_TEST_DIGEST_CRASH_AT")
    if _point == "after-claim":  # the window is claimed (its parts stored), nothing sent
        _claim = Store.claim_digest_run

        def _claim_then_die(self, *args, **kwargs):
            run = _claim(self, *args, **kwargs)
            if run.state == "posting":
                os._exit(70)
            return run

        Store.claim_digest_run = _claim_then_die
    elif _point == "after-send":  # the homeserver has the digest; the run is not marked
        _finish = Store.finish_digest_run

        def _die_before_recording(self, schedule_key, window_end, state, *args, **kwargs):
            if state == "posted":
                os._exit(70)
            return _finish(self, schedule_key, window_end, state, *args, **kwargs)

        Store.finish_digest_run = _die_before_recording
    elif _point:
        raise SystemExit(f"LIAISON_TEST_DIGEST_CRASH_AT: unknown crash point {_point!r}")
    """
)


def _digest_config(fire: datetime) -> str:
    """A daily digest of nato-s that last fired at `fire` (a minute or two ago): the start
    after a downtime owes exactly that window (within digest_catchup_grace), and the
    schedule fires no other window while the test runs."""
    return textwrap.dedent(
        f"""
        [[digests]]
        room = "nato-s"
        cron = "{fire.minute} {fire.hour} * * *"
        window = "12h"
        sources = ["nato-s"]
        """
    )


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
@pytest.mark.parametrize("crash_point", ["after-claim", "after-send"])
async def test_crash_between_claim_and_post_posts_the_digest_once(
    crash_point: str,
    database: str,
    tmp_path: Path,
    synapse: DevServer,
    make_user: MakeUser,
    make_client: MakeClient,
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(CRASH_HOOK)
    with contextlib.ExitStack() as stack:
        url = "sqlite:///bot.db"
        if database == "postgresql":
            url = stack.enter_context(fresh_schema())
        async with process_scenario(tmp_path, synapse, make_user, make_client, url) as s:
            # One item relayed into nato-s, so the window's part comes with its picture.
            item = f"[GEHEIM // REL TO NATO] [FLASH] pictured-{crash_point}"
            await s.officer.send_text(s.deu, item)
            await s.member.wait_for_text(s.nato_s, f"pictured-{crash_point}", 60)
            await s.stop()  # add the schedule, with a run on record a day before
            fire = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
            with s.store.session() as session:  # the item, an hour into the window
                for row in session.scalars(select(IntelItemRow)):
                    row.created_at = fire - timedelta(hours=1)
            with s.config_path.open("a") as config:
                config.write(_digest_config(fire))
            note = AuditNote("cli:test", "digest.posted", "cfg-1", {"room": "nato-s"})
            s.store.finish_digest_run(
                "cfg-1", fire - timedelta(days=1), RunState.POSTED, None, note
            )

            python_path = [str(hooks), os.environ.get("PYTHONPATH", "")]
            s.start(
                LIAISON_TEST_DIGEST_CRASH_AT=crash_point,
                PYTHONPATH=os.pathsep.join(filter(None, python_path)),
            )
            assert await asyncio.to_thread(s.proc.wait, 90) == CRASH_EXIT
            run = s.store.digest_run("cfg-1", fire)
            assert run is not None and run.state == RunState.POSTING

            s.start()  # no crash point now
            await s.wait_for_log("reusing device")

            def posted() -> str | None:
                again = s.store.digest_run("cfg-1", fire)
                assert again is not None
                return again.event_id if again.state == RunState.POSTED else None

            event_id = await eventually(posted, timeout=60, what="the run recorded as posted")
            seen = await s.member.wait_for(s.nato_s, lambda e: e.event_id == event_id, timeout=60)
            assert isinstance(seen, RoomMessageNotice), seen
            assert "Situation digest" in seen.body and "(delayed" in seen.body
            # The run's event is the last part sent (a single part here): a second copy
            # would have been sent before it and so be seen by now.
            digests = [t for t in s.member.texts(s.nato_s) if "Situation digest" in t]
            assert len(digests) == 1, s.member.summary(s.nato_s)
            # Its picture, sent after it and before the run was recorded: exactly one, though
            # a re-drive after the send draws, encrypts and uploads it again.
            await s.member.synced()
            events = s.member.events[s.nato_s]
            images = [e for e in events if e.source.get("content", {}).get("msgtype") == "m.image"]
            assert len(images) == 1, s.member.summary(s.nato_s)
            assert events.index(seen) < events.index(images[0])
            assert "1 item(s); FLASH 1" in images[0].source["content"]["body"]


# ---------------------------------------------------------------- the re-drive, in process


@dataclass
class FlakyMessenger(FakeMessenger):
    """Refuses the first `failures` sends (the homeserver unreachable)."""

    failures: int = 0

    async def send(
        self,
        room_id: str,
        content: dict[str, Any],
        tx_id: str | None = None,
        also_to: Sequence[Device] = (),
    ) -> EventId:
        if self.failures:
            self.failures -= 1
            raise MatrixError("send", None, "unreachable", None)
        return await super().send(room_id, content, tx_id, also_to)


def test_a_claimed_run_is_posted_on_the_next_tick_with_what_was_claimed(store: Store) -> None:
    """The send fails after the claim: the run stays claimed, its events stored sealed (no
    text in clear); the next tick posts exactly those events under the same transaction
    ids (an item stored since does not change them), then the tick's own window."""
    bot, clock = FlakyMessenger(failures=1), Clock(T0 + timedelta(minutes=1))
    service = digest_service(store, clock, bot)
    asyncio.run(service.fire("cfg-1"))  # the 06:00 window, refused by the homeserver
    assert bot.posted == []
    claimed = store.digest_run("cfg-1", T0)
    assert claimed is not None and claimed.state == RunState.POSTING and claimed.parts
    assert "Situation digest" not in claimed.parts and "nato-s" not in claimed.parts

    with store.session() as session:
        session.add(_item_row("$late", T0 - timedelta(hours=1)))
    clock.now = T0 + timedelta(hours=12, minutes=1)
    asyncio.run(service.fire("cfg-1"))  # the 18:00 tick re-drives 06:00 first
    assert [p[2] for p in bot.posted] == part_txn_ids("cfg-1", T0, 1) + part_txn_ids(
        "cfg-1", T0 + timedelta(hours=12), 1
    )
    assert "No items in this window" in bot.posted[0][1]  # as claimed, before $late
    posted = store.digest_run("cfg-1", T0)
    assert posted is not None and posted.state == RunState.POSTED
    assert posted.event_id == "$digest1" and posted.parts is None  # sealed text not kept


def test_a_run_claimed_over_23_hours_ago_is_not_resent_but_reported(store: Store) -> None:
    """Past the homeserver's transaction id memory a re-send could post a second copy:
    the run is recorded stale, audited, and the admins are told; nothing is sent."""
    bot, clock = FlakyMessenger(failures=1), Clock(T0 + timedelta(minutes=1))
    service = digest_service(store, clock, bot)
    asyncio.run(service.fire("cfg-1"))
    with store.session() as session:
        row = session.scalar(select(DigestRunRow))
        assert row is not None
        row.created_at = datetime.now(UTC) - timedelta(hours=24)

    async def restart() -> None:
        await service.start()
        service.shutdown()

    asyncio.run(restart())
    assert bot.posted == []
    stale = store.digest_run("cfg-1", T0)
    assert stale is not None and stale.state == RunState.STALE and stale.parts is None
    assert any(e.action == "digest.stale" for e in store.recent_audit(5))
    assert len(bot.alerts) == 1 and "cfg-1" in bot.alerts[0]


def test_stored_parts_moved_to_another_run_do_not_open(store: Store) -> None:
    """A database writer copying one run's sealed events into another run (or room) gets
    nothing posted: they are bound to their run; the run is given up and reported."""
    bot, clock = FlakyMessenger(failures=2), Clock(T0 + timedelta(minutes=1))
    service = digest_service(store, clock, bot)
    asyncio.run(service.fire("cfg-1"))
    clock.now = T0 + timedelta(hours=12, minutes=1)
    asyncio.run(
        service.post_window(service.config_schedules()[0], T0 + timedelta(hours=12), delayed=False)
    )
    with store.session() as session:
        first, second = session.scalars(select(DigestRunRow).order_by(DigestRunRow.window_end))
        second.parts = first.parts
    asyncio.run(service.redrive())
    assert [p[2] for p in bot.posted] == part_txn_ids("cfg-1", T0, 1)  # the first run only
    moved = store.digest_run("cfg-1", T0 + timedelta(hours=12))
    assert moved is not None and moved.state == RunState.STALE
    assert len(bot.alerts) == 1


def _item_row(event_id: str, at: datetime) -> IntelItemRow:
    return IntelItemRow(
        event_id=event_id,
        room_key="nato-s",
        room_id="!n:x",
        sender="@lo:x",
        label="NATO SECRET",
        scheme="NATO",
        rank=3,
        precedence=int(Precedence.ROUTINE),
        exercise=False,
        topics=[],
        text="sealed",
        created_at=at,
    )


def test_a_run_whose_item_was_withdrawn_after_the_claim_is_not_sent_as_composed(
    store: Store,
) -> None:
    """Attack review of issue 24 (M4): the stored parts were sent as composed, showing an
    item withdrawn (redacted, re-marked) since, up to 23 hours later."""
    with store.session() as session:
        session.add(_item_row("$in", T0 - timedelta(hours=1)))
    bot, clock = FlakyMessenger(failures=1), Clock(T0 + timedelta(minutes=1))
    service = digest_service(store, clock, bot)
    asyncio.run(service.fire("cfg-1"))  # composed with $in, refused by the homeserver
    assert bot.posted == []
    store.redact_item("$in", None)  # its sender withdraws it
    clock.now = T0 + timedelta(hours=12, minutes=1)
    asyncio.run(service.fire("cfg-1"))
    assert [p[2] for p in bot.posted] == part_txn_ids("cfg-1", T0 + timedelta(hours=12), 1)
    stale = store.digest_run("cfg-1", T0)
    assert stale is not None and stale.state == RunState.STALE
    assert any("edited or withdrawn" in a for a in bot.alerts)
