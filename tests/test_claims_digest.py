"""Scheduled digests on a real Synapse, read by a member's E2EE client: a cron schedule
fires and its digest reaches the room's members, decryptable; and a bot started after a
window it missed posts that window once, marked delayed (README, Situation digests).

No test waits for a real minute boundary. The first drives the bot's own scheduler: the
schedule's job is due now (APScheduler's `next_run_time`), so APScheduler calls the job it
was given with the arguments it was given, and the window is the schedule's newest fire time,
as at any tick. The second is the start of a bot whose schedule last ran a day before and
fired two minutes ago while it was down, written into its database as the bot writes a run
(as tests/test_digest_redrive.py does)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from nio import Event, RoomMessageNotice

from bot.devtools.botenv import SECRETS, rooms_config
from bot.devtools.e2ee_client import E2EEClient
from bot.storage import AuditNote, RunState, Store, audit_key_from
from tests.bot_harness import BotEnv, enrol, nothing_arrives, open_dm, posted_barrier, talk
from tests.matrix_harness import MakeClient, MakeUser

BOT_ROOMS = rooms_config()


async def _reader(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> tuple[E2EEClient, str, E2EEClient, str]:
    """The admin's client and DM with the bot, and a NATO SECRET member of nato-s (its
    client, the room id)."""
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    person = make_user("nor")
    member = await make_client(person)
    (nato_s,) = await enrol(
        (admin, dm), [(person.user_id, "NATO SECRET", "NOR")], [(member, "nato-s")]
    )
    return admin, dm, member, nato_s


def _window(end: datetime, hours: int) -> str:
    return f"Window {end - timedelta(hours=hours):%Y-%m-%d %H:%MZ} → {end:%Y-%m-%d %H:%MZ}"


def _digest_of(window: str) -> Callable[[Event], bool]:
    def matches(event: Event) -> bool:
        return isinstance(event, RoomMessageNotice) and window in event.body

    return matches


async def test_a_cron_schedule_fires_and_its_members_read_the_digest(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    admin, dm, member, nato_s = await _reader(bot_env, make_client, make_user)
    bot = bot_env.bot
    assert bot is not None
    # Daily, twelve hours from now: the scheduler would not fire it while the test runs.
    when = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(hours=12)
    made = await talk(
        admin,
        dm,
        f'!digest schedule nato-s "{when.minute} {when.hour} * * *" --window 24h',
        "Scheduled: db-",
    )
    key = made.body.split("Scheduled: ")[1].split(":")[0]
    job = bot.digests.scheduler.get_job(key)
    assert job is not None, f"no job for {key}: {bot.digests.next_runs()}"
    assert job.next_run_time == when, (job.next_run_time, when)

    since = member.event_count(nato_s)
    job.modify(next_run_time=datetime.now(UTC))  # due now: the scheduler runs it
    end = when - timedelta(days=1)  # the schedule's newest fire time
    window = _window(end, 24)
    digest = await member.wait_for(nato_s, _digest_of(window), 60, after=since)
    assert isinstance(digest, RoomMessageNotice), digest  # decrypted by the member's client
    assert digest.sender == bot_env.bot_user.user_id
    assert "Situation digest — NATO SECRET liaison (nato-s)" in digest.body
    assert "delayed" not in digest.body
    assert bot_env.store is not None
    run = bot_env.store.digest_run(key, end)
    assert run is not None and run.state == RunState.POSTED and run.event_id == digest.event_id
    # and the schedule goes on: next due at its next fire time
    again = bot.digests.scheduler.get_job(key)
    assert again is not None and again.next_run_time == when, (again, when)


async def test_a_bot_started_after_a_missed_window_posts_it_once_marked_delayed(
    own_bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    # Its own bot: the test adds a schedule to the config the next start reads.
    bot_env = own_bot_env
    _admin, _dm, member, nato_s = await _reader(bot_env, make_client, make_user)
    await bot_env.stop()
    # A daily schedule that fired two minutes ago, while the bot was down, and last ran
    # the day before (a schedule that never ran owes nothing at its first start).
    fire = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
    with bot_env.config_path.open("a") as config:
        config.write(
            textwrap.dedent(
                f"""
                [[digests]]
                room = "nato-s"
                cron = "{fire.minute} {fire.hour} * * *"
                window = "12h"
                sources = ["nato-s"]
                """
            )
        )
    store = Store.from_url(bot_env.config.database_url(), audit_key_from(SECRETS.data_key))
    try:
        note = AuditNote("cli:test", "digest.posted", "cfg-1", {"room": "nato-s"})
        store.finish_digest_run("cfg-1", fire - timedelta(days=1), RunState.POSTED, None, note)
    finally:
        store.close()
    since = member.event_count(nato_s)

    bot = await bot_env.start()

    window = _window(fire, 12)
    digest = await member.wait_for(nato_s, _digest_of(window), 60, after=since)
    assert isinstance(digest, RoomMessageNotice), digest
    assert "(delayed: the bot was down when it was due)" in digest.body, digest.body
    assert bot_env.store is not None
    run = bot_env.store.digest_run("cfg-1", fire)
    assert run is not None and run.state == RunState.POSTED and run.event_id == digest.event_id
    assert run.delayed
    # once: no second copy before a later notice of the bot's into the room
    await nothing_arrives(
        member,
        nato_s,
        _digest_of(window),
        since=since,
        already=1,
        barrier=posted_barrier(bot, nato_s),
        what="a second copy of the delayed digest",
    )
