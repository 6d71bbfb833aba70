"""Running liaison-bot in-process against the test Synapse, and talking to it as people do.

`bot_env` gives a bot with its own database, crypto store and rooms (keys unique to the
test module), plus an admin and an officer. `talk()` sends a command into a room and waits
for the bot's reply there.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from nio import Event, JoinResponse, MegolmEvent, RoomMessageNotice, RoomMessageText

from bot.config import load_config
from bot.devtools.botenv import ROOMS, SECRETS, BotEnv, write_config
from bot.devtools.devserver import DevServer
from bot.devtools.e2ee_client import E2EEClient, open_dm, talk
from bot.storage import Store, audit_key_from
from bot.storage.migrate import upgrade
from policy.ids import RoomKey, UserId
from tests.matrix_harness import MakeClient, MakeUser

if TYPE_CHECKING:
    from bot.app import LiaisonBot
from tests.pg import fresh_schema


@contextlib.asynccontextmanager
async def bot_env_on(
    request: pytest.FixtureRequest, server: DevServer, make_user: MakeUser, workdir: Path
) -> AsyncIterator[BotEnv]:
    """A bot of its own on `server` (users, database, crypto store, rooms) as the test
    module asks for it (BOT_ROOMS, BOT_EXTRA_CONFIG, ...: see `bot_env`), stopped at the end."""
    stack = contextlib.ExitStack()
    database = "sqlite:///bot.db"
    if getattr(request.module, "BOT_DATABASE", "sqlite") == "postgresql":
        database = stack.enter_context(fresh_schema())
    bot_user = make_user("liaison")
    admin = make_user("secadmin")
    officer = make_user("lo-deu")
    config_path = workdir / "config.toml"
    write_config(
        config_path,
        server,
        bot_user,
        admin.user_id,
        officer.user_id,
        getattr(request.module, "BOT_ROOMS", ROOMS)
        + getattr(request.module, "BOT_EXTRA_CONFIG", ""),
        extra_bot=getattr(request.module, "BOT_EXTRA_BOT", ""),
        device_trust=getattr(request.module, "BOT_DEVICE_TRUST", "cross-signed"),
        database_url=database,
        sweep_interval=getattr(request.module, "BOT_SWEEP_INTERVAL", "2s"),
        crypto_store=getattr(request.module, "BOT_CRYPTO_STORE", "crypto"),
    )
    env = BotEnv(
        server,
        workdir,
        bot_user,
        admin,
        officer,
        config_path,
        extra={"feed_tokens": getattr(request.module, "BOT_FEED_TOKENS", {})},
    )
    with stack:
        await env.start()
        try:
            yield env
        finally:
            await env.stop()


@pytest.fixture(scope="module")
async def bot_env(
    request: pytest.FixtureRequest,
    synapse: DevServer,
    make_user: MakeUser,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[BotEnv]:
    """A bot for the test module, managing the rooms deu and nato-s with the route between
    them (ROOMS). A module sets BOT_ROOMS to manage others (botenv.rooms_config builds them),
    BOT_EXTRA_CONFIG to add sections, BOT_DEVICE_TRUST = "tofu" to change policy,
    BOT_EXTRA_BOT to add lines to the [bot] section, BOT_SWEEP_INTERVAL to sweep other than
    every 2 s, BOT_CRYPTO_STORE = "database" to keep the crypto store in the database (with
    BOT_DATABASE = "postgresql").

    The module's tests share it, in whatever order they run, so none may leave it changed
    for the next: a test that stops and starts it again on the same database and crypto
    store does so with `stopped(bot_env)`, which starts it again even when the test fails
    inside (the next test gets a running bot on the same rows and device, as a restart in
    production would leave it); a test that changes what a start reads (rows written behind
    the bot's back, its crypto store, a start that must fail) takes `own_bot_env` instead."""
    async with bot_env_on(request, synapse, make_user, tmp_path_factory.mktemp("bot")) as env:
        yield env


@pytest.fixture
async def own_bot_env(
    request: pytest.FixtureRequest,
    synapse: DevServer,
    make_user: MakeUser,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[BotEnv]:
    """A bot of the test's own, built as `bot_env` builds the module's (same module
    settings), stopped after the test: for a test that changes what a start reads, so that
    whatever it leaves (rows, snapshots, a stopped bot) goes with it."""
    async with bot_env_on(request, synapse, make_user, tmp_path_factory.mktemp("bot")) as env:
        yield env


@contextlib.asynccontextmanager
async def stopped(env: BotEnv) -> AsyncIterator[None]:
    """The bot stopped for the block and started again after it, on the same database and
    crypto store, also when the block raises (a test sharing `bot_env` must not leave it
    stopped for the tests after it)."""
    await env.stop()
    try:
        yield
    finally:
        if env.bot is None:
            await env.start()


async def restart(env: BotEnv) -> None:
    """Stop the bot and start it again on the same database and crypto store (see
    `stopped`)."""
    async with stopped(env):
        pass


@pytest.fixture(scope="module")
async def bot_env_without_gate(
    request: pytest.FixtureRequest,
    synapse_without_gate: DevServer,
    make_user_without_gate: MakeUser,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[BotEnv]:
    """The same on `synapse_without_gate`: nothing but the bot keeps its rooms closed."""
    workdir = tmp_path_factory.mktemp("bot")
    async with bot_env_on(request, synapse_without_gate, make_user_without_gate, workdir) as env:
        yield env


async def eventually(check: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    """Poll an async or sync check until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true after {timeout} s: {what}")
        await asyncio.sleep(0.25)


async def audited(bot_env: BotEnv, action: str, subject: str, timeout: float = 20) -> Any:
    """The newest audit entry of this action about this subject, once it is written.

    The bot acts on the homeserver first (a kick, a leave) and audits what it did after, so
    a test that sees the effect may read the log a moment before the entry is there."""
    return await in_audit(
        bot_env,
        lambda entries: next(
            (e for e in entries if e.action == action and e.subject == subject), None
        ),
        f"audit {action} {subject}",
        timeout=timeout,
    )


async def in_audit(
    bot_env: BotEnv,
    check: Callable[[list[Any]], Any],
    what: str,
    *,
    limit: int = 50,
    timeout: float = 20,
) -> Any:
    """What `check` finds in the newest `limit` audit entries (newest first), once it finds
    something (truthy): read again until then, as `audited` does, for claims about more
    than one entry or about more than an action and a subject."""
    assert bot_env.bot is not None
    bot = bot_env.bot

    async def found() -> Any:
        return check(list(await bot.commands.audit_recent(limit)))

    return await eventually(found, timeout, what)


# -- negative claims, proved with a barrier ---------------------------------------------------
#
# "Nothing was relayed", "no duplicate", "no key for that device" cannot be seen by waiting a
# while: a slow bot passes any fixed wait. Instead a *barrier* goes down the same path later
# (a later tagged message relayed into the same room, a later message from the bot into the
# room): the bot handles a room's events in order and relays into each target room in order,
# and shares a room key before it sends the event it encrypts, so once the barrier has arrived
# at the observer, anything forbidden that was going to arrive before it has arrived. Only then
# is the absence asserted.

Arrived = Callable[[Event], bool]
Barrier = Callable[[], Awaitable[Arrived]]  # sends the later message; how to know it arrived


def text_with(substring: str) -> Arrived:
    """An event the observer could read (text or notice) whose body contains substring."""
    return lambda e: isinstance(e, (RoomMessageText, RoomMessageNotice)) and substring in e.body


def replying_to(event_id: str) -> Arrived:
    """The bot's notice in reply to an event (a receipt, an answer)."""

    def answers(e: Event) -> bool:
        if not isinstance(e, RoomMessageNotice):
            return False
        relates = e.source.get("content", {}).get("m.relates_to", {})
        return bool(relates.get("m.in_reply_to", {}).get("event_id") == event_id)

    return answers


async def _tagged(sender: E2EEClient, room_id: str, marking: str) -> tuple[str, str]:
    """Send a tagged barrier message and wait for the bot's receipt of it, so that nothing of
    the barrier is still to come when a test goes on; (its tag, its event id)."""
    tag = f"barrier-{secrets.token_hex(4)}"
    mark = sender.event_count(room_id)
    event_id = await sender.send_text(room_id, f"[{marking}] {tag}")
    await sender.wait_for(room_id, replying_to(event_id), 60, after=mark)
    return tag, event_id


def relayed_barrier(sender: E2EEClient, source_room: str, marking: str) -> Barrier:
    """A later tagged message from `sender` in `source_room`, that the bot must relay into the
    observer's room: it arrives after any earlier copy the bot made into that room."""

    async def send() -> Arrived:
        tag, _ = await _tagged(sender, source_room, marking)
        return text_with(tag)

    return send


def answered_barrier(sender: E2EEClient, room_id: str, marking: str) -> Barrier:
    """A later tagged message from `sender` in `room_id`; it has arrived when the bot's
    answer to it (its receipt) has: the bot answers a room's messages in order."""

    async def send() -> Arrived:
        _, event_id = await _tagged(sender, room_id, marking)
        return replying_to(event_id)

    return send


def posted_barrier(bot: LiaisonBot, room_id: str) -> Barrier:
    """A later notice from the bot into the room itself (its room key shared before it is
    sent, like every earlier one's)."""
    from commands.document import doc

    async def send() -> Arrived:
        event_id = await bot.messenger.send_notice(room_id, doc("barrier"))
        return lambda e: e.event_id == event_id

    return send


async def nothing_arrives(
    observer: E2EEClient,
    room_id: str,
    forbidden: Callable[[Event], bool],
    *,
    since: int,
    barrier: Barrier,
    already: int = 0,
    readable: bool = True,
    settle: bool = False,
    timeout: float = 60,
    what: str = "the forbidden event",
) -> Event:
    """Assert that no event matching `forbidden` (the barrier's own event aside) reached
    `observer` in the room after mark `since` (beyond the `already` legitimate ones:
    `already=1` says "exactly once, no duplicate"), once `barrier` (sent now) has arrived
    there after them. The barrier's event.

    `readable`: every event in the window must be readable by the observer (after one more
    sync for a late key), so a forbidden one cannot hide as ciphertext. `settle`: one more
    whole sync after the barrier before looking, for what comes outside the timeline (room
    keys, to-device)."""
    arrived = await barrier()
    event = await observer.wait_for(room_id, arrived, timeout, after=since)
    if settle or (
        readable and any(isinstance(e, MegolmEvent) for e in observer.events[room_id][since:])
    ):
        await observer.synced()
    window = observer.events[room_id][since:]
    if readable:
        hidden = [e for e in window if isinstance(e, MegolmEvent)]
        assert not hidden, f"unreadable events could hide {what}:\n{observer.summary(room_id)}"
    seen = [e for e in window if e is not event and forbidden(e)]
    assert len(seen) == already, (
        f"{what}: {len(seen)} seen before the barrier, {already} allowed\n"
        + observer.summary(room_id)
    )
    return event


async def no_key_for(
    bot: LiaisonBot, device: E2EEClient, room_id: str, event_id: str, *, barrier: Barrier
) -> frozenset[tuple[str, str]]:
    """Assert that `device` got no room key for the bot's event `event_id`: by the bot's own
    record of whom that megolm session went to (the session is still the room's current
    outbound one), and by the device itself, which still cannot decrypt the event after
    `barrier` (a later send into the room: keys go out before the event they encrypt) and a
    whole sync more. The devices the bot's record says the session went to."""
    index, event = next(
        (i, e) for i, e in enumerate(device.events[room_id]) if e.event_id == event_id
    )
    assert isinstance(event, MegolmEvent), f"{device.user_id} {device.device_id} reads it"
    me = (device.user_id, device.device_id)

    def holders() -> frozenset[tuple[str, str]] | None:
        olm = bot.gateway.client.olm
        assert olm is not None
        session = olm.outbound_group_sessions.get(room_id)
        if session is None or session.id != event.session_id:
            return None  # rotated: the bot keeps no record of an old session's recipients
        return frozenset(session.users_shared_with)

    before = holders()
    assert before is not None, "the bot no longer holds the event's session to tell"
    assert me not in before, f"the bot's record: session shared with {me}"
    await nothing_arrives(
        device,
        room_id,
        lambda e: e.event_id == event_id and not isinstance(e, MegolmEvent),
        since=index,
        barrier=barrier,
        readable=False,
        settle=True,
        what=f"a readable {event_id} on {me}",
    )
    after = holders()  # the barrier may have gone out with the same session
    assert after is None or me not in after, f"the bot's record: session shared with {me}"
    return before


__all__ = [
    "ROOMS",
    "SECRETS",
    "BotEnv",
    "MakeClient",
    "answered_barrier",
    "audited",
    "bot_env",
    "bot_env_on",
    "bot_env_without_gate",
    "enrol",
    "eventually",
    "in_audit",
    "no_key_for",
    "nothing_arrives",
    "open_dm",
    "own_bot_env",
    "posted_barrier",
    "relayed_barrier",
    "replying_to",
    "restart",
    "stopped",
    "talk",
    "text_with",
    "write_config",
]


@dataclass
class ProcessScenario:
    """The bot as its own process (`liaison-bot run`), with an officer in `deu` and a NATO
    member in `nato-s`, for tests that kill and restart it. The people and the room ids are
    set once the bot has made the rooms (`process_scenario`)."""

    config_path: Path
    env: dict[str, str]
    log: Path
    store: Store
    proc: Any = None
    officer: E2EEClient = field(init=False, repr=False)
    member: E2EEClient = field(init=False, repr=False)
    deu: str = field(init=False, repr=False)
    nato_s: str = field(init=False, repr=False)

    def start(self, **extra_env: str) -> Any:
        from bot.devtools.hapair import start_bot

        self.proc = start_bot(self.config_path, {**self.env, **extra_env}, self.log)
        return self.proc

    async def wait_for_log(self, text: str, timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while text not in self.log.read_text(errors="replace"):
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"bot exited {self.proc.returncode}:\n{self.log.read_text()}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{text!r} not logged:\n{self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.proc.wait, 30)


def room_id_of(store: Store, key: str) -> str:
    room = store.room(key)
    assert room is not None and room.room_id is not None, f"the bot has not made {key}"
    return room.room_id


@contextlib.asynccontextmanager
async def process_scenario(
    tmp_path: Path,
    server: DevServer,
    make_user: MakeUser,
    make_client: MakeClient,
    database_url: str = "sqlite:///bot.db",
    crypto_store: str = "crypto",
    **first_env: str,
) -> AsyncIterator[ProcessScenario]:
    """Register the people, grant clearances offline, start the bot process (with
    `first_env` for its first run), invite and join everyone. `crypto_store` as in the
    config: a folder, or "database" (with a PostgreSQL `database_url`)."""
    import os

    from bot.services.register import ClearanceRegister

    bot_user, admin, officer, member = (make_user(p) for p in ("liaison", "admin", "lo", "nor"))
    config_path = tmp_path / "config.toml"
    write_config(
        config_path,
        server,
        bot_user,
        admin.user_id,
        officer.user_id,
        ROOMS,
        database_url=database_url,
        data_key="process-data-key-0123456789abcdef",
        crypto_store=crypto_store,
    )
    config = load_config(config_path)
    await asyncio.to_thread(upgrade, config.database_url())
    data_key = "process-data-key-0123456789abcdef"
    store = Store.from_url(config.database_url(), audit_key_from(data_key))  # as the CLI would
    register = ClearanceRegister(store)
    register.grant("cli:test", officer.user_id, "DEU GEHEIM", nationality="DEU")
    register.grant("cli:test", officer.user_id, "NATO SECRET")
    register.grant("cli:test", member.user_id, "NATO SECRET", nationality="NOR")
    env = {
        **os.environ,
        "LIAISON_TEST_PASSWORD": bot_user.password,
        "LIAISON_TEST_PICKLE_KEY": "process-pickle-key-0123456789abcdef",
        "LIAISON_TEST_DATA_KEY": data_key,
    }
    scenario = ProcessScenario(config_path, env, tmp_path / "bot.log", store)
    scenario.start(**first_env)
    try:
        await scenario.wait_for_log("first sync after")
        scenario.deu, scenario.nato_s = room_id_of(store, "deu"), room_id_of(store, "nato-s")
        admin_client = await make_client(admin)
        dm = await open_dm(admin_client, bot_user.user_id)
        scenario.officer, scenario.member = await make_client(officer), await make_client(member)
        await enrol(
            (admin_client, dm), [], [(scenario.officer, "deu"), (scenario.member, "nato-s")]
        )
        yield scenario
    finally:
        await scenario.stop()
        store.close()


async def enrol(
    admin: BotEnv | tuple[E2EEClient, str],
    grants: Iterable[tuple[str, str, str]],
    joins: Iterable[tuple[E2EEClient, str]] = (),
    *,
    at_once: bool = False,
) -> list[str]:
    """Grant each (user id, level, nationality) clearance, then invite each client to its
    room (by key) and have it join; the ids of the rooms joined, in the order of `joins`.

    `admin` is who does it: the admin's client and DM with the bot, to use the chat commands
    (`!clearance grant`, `!invite`), or the BotEnv, to call the bot's command ports
    (`bot.commands.grant`, `bot.commands.invite`) as its admin. A client joins once its
    invite has reached it; with `at_once` (BotEnv only) it joins by room id the moment the invite is made, without waiting for any sync."""
    if isinstance(admin, BotEnv):
        env, bot = admin, admin.bot
        assert bot is not None

        async def grant(user_id: str, level: str, nation: str) -> None:
            await bot.commands.grant(
                UserId(env.admin.user_id),
                UserId(user_id),
                level,
                nationality=nation,
                expires=None,
                caveats=(),
            )

        async def invite(user_id: str, key: str) -> None:
            outcome = await bot.commands.invite(
                UserId(env.admin.user_id), UserId(user_id), RoomKey(key)
            )
            assert outcome.invited, outcome

    else:
        assert not at_once, "joining at once needs the room ids: pass the BotEnv"
        admin_client, dm = admin

        async def grant(user_id: str, level: str, nation: str) -> None:
            command = f'!clearance grant {user_id} "{level}" --nationality {nation}'
            await talk(admin_client, dm, command, "Clearance updated")

        async def invite(user_id: str, key: str) -> None:
            await talk(admin_client, dm, f"!invite {user_id} {key}", "Invited")

    for user_id, level, nation in grants:
        await grant(user_id, level, nation)
    room_ids = []
    for client, key in joins:
        await invite(client.user_id, key)
        if at_once:
            room_id = env.room_id(key)
            joined = await client.client.join(room_id)
            assert isinstance(joined, JoinResponse), joined
        else:
            room_id = await client.wait_for_invite()
            await client.join(room_id)
        room_ids.append(room_id)
    return room_ids
