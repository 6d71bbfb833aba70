"""Running liaison-bot in-process against the test Synapse, and talking to it as people do.

`bot_env` gives a bot with its own database, crypto store and rooms (keys unique to the
test module), plus an admin and an officer. `talk()` sends a command into a room and waits
for the bot's reply there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nio import JoinResponse

from bot.config import load_config
from bot.devtools.botenv import ROOMS, SECRETS, BotEnv, write_config
from bot.devtools.devserver import DevServer
from bot.devtools.e2ee_client import E2EEClient, open_dm, talk
from bot.storage import Store, audit_key_from
from bot.storage.migrate import upgrade
from tests.matrix_harness import MakeClient, MakeUser
from tests.pg import fresh_schema


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
    BOT_EXTRA_BOT to add lines to the [bot] section."""
    workdir = tmp_path_factory.mktemp("bot")
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
        synapse,
        bot_user,
        admin.user_id,
        officer.user_id,
        getattr(request.module, "BOT_ROOMS", ROOMS)
        + getattr(request.module, "BOT_EXTRA_CONFIG", ""),
        extra_bot=getattr(request.module, "BOT_EXTRA_BOT", ""),
        device_trust=getattr(request.module, "BOT_DEVICE_TRUST", "cross-signed"),
        database_url=database,
    )
    env = BotEnv(
        synapse,
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
    assert bot_env.bot is not None
    bot = bot_env.bot

    async def entry() -> Any:
        entries = await bot.commands.audit_recent(50)
        return next((e for e in entries if e.action == action and e.subject == subject), None)

    return await eventually(entry, timeout, f"audit {action} {subject}")


__all__ = [
    "ROOMS",
    "SECRETS",
    "BotEnv",
    "MakeClient",
    "audited",
    "bot_env",
    "enrol",
    "eventually",
    "open_dm",
    "talk",
    "write_config",
]


@dataclass
class ProcessScenario:
    """The bot as its own process (`liaison-bot run`), with an officer in `deu` and a NATO
    member in `nato-s`, for tests that kill and restart it."""

    config_path: Path
    env: dict[str, str]
    log: Path
    store: Store
    officer: E2EEClient
    member: E2EEClient
    deu: str
    nato_s: str
    proc: Any = None

    def start(self, **extra_env: str) -> Any:
        import subprocess
        import sys

        script = str(Path(sys.executable).parent / "liaison-bot")
        self.proc = subprocess.Popen(
            [script, "run", "--config", str(self.config_path)],
            env={**self.env, **extra_env},
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
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


@contextlib.asynccontextmanager
async def process_scenario(
    tmp_path: Path,
    server: DevServer,
    make_user: MakeUser,
    make_client: MakeClient,
    database_url: str = "sqlite:///bot.db",
    **first_env: str,
) -> AsyncIterator[ProcessScenario]:
    """Register the people, grant clearances offline, start the bot process (with
    `first_env` for its first run), invite and join everyone."""
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
    scenario = ProcessScenario(config_path, env, tmp_path / "bot.log", store, None, None, "", "")  # type: ignore[arg-type]
    scenario.start(**first_env)
    try:
        await scenario.wait_for_log("first sync after")
        scenario.deu = store.room("deu").room_id  # type: ignore[union-attr,assignment]
        scenario.nato_s = store.room("nato-s").room_id  # type: ignore[union-attr,assignment]
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
                env.admin.user_id, user_id, level, nationality=nation, expires=None, caveats=()
            )

        async def invite(user_id: str, key: str) -> None:
            outcome = await bot.commands.invite(env.admin.user_id, user_id, key)
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
