"""The bot in-process against a throwaway homeserver, as the tests and the benchmarks run it:
`BotEnv` starts (and restarts) a bot on its own database and crypto store from a config
that `write_config` writes."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.app import LiaisonBot, Secrets
from bot.config import Config, load_config
from bot.devtools.devserver import DevServer, RegisteredUser
from bot.gate.config import register_entry
from bot.storage import Store
from bot.storage.migrate import upgrade

SECRETS = Secrets(
    pickle_key="test-pickle-key", data_key="test-data-key", password=None, access_token=None
)


@dataclass
class BotEnv:
    server: DevServer
    workdir: Path
    bot_user: RegisteredUser
    admin: RegisteredUser
    officer: RegisteredUser
    config_path: Path
    bot: LiaisonBot | None = None
    store: Store | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    async def start(self, **overrides: Any) -> LiaisonBot:
        """Start (or restart) the bot on the same database and crypto store."""
        config = load_config(self.config_path)
        url = config.database_url()
        await asyncio.to_thread(upgrade, url)
        self.store = Store.from_url(url)
        secrets = Secrets(
            SECRETS.pickle_key,
            SECRETS.data_key,
            self.bot_user.password,
            None,
            dict(self.extra.get("feed_tokens", {})),
        )
        self.bot = LiaisonBot(config, self.store, secrets)
        await self.bot.start()
        await asyncio.wait_for(self.bot.synced.wait(), 60)
        return self.bot

    async def stop(self) -> None:
        if self.bot is not None:
            await self.bot.close()
            self.bot = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def room_id(self, key: str) -> str:
        assert self.bot is not None
        return self.bot.rooms.by_key[key].room_id


def write_config(
    path: Path,
    server: DevServer,
    bot_user: RegisteredUser,
    admin: str,
    officer: str,
    rooms: str,
    extra_bot: str = "",
    device_trust: str = "cross-signed",
    database_url: str = "sqlite:///bot.db",
    data_key: str | None = None,
    sweep_interval: str = "2s",
    crypto_store: str = "crypto",
) -> None:
    """Write a test bot's config and register it with the homeserver gate, which verifies
    its rows with the public key of `data_key` (the bot's data key; SECRETS' by default).
    `crypto_store`: a folder beside the config, or "database" (PostgreSQL only)."""
    path.write_text(
        textwrap.dedent(
            f"""
            [homeserver]
            url = "{server.base_url}"
            user_id = "{bot_user.user_id}"
            password_env = "LIAISON_TEST_PASSWORD"
            pickle_key_env = "LIAISON_TEST_PICKLE_KEY"
            device_trust = "{device_trust}"

            [storage]
            database_url = "{database_url}"
            crypto_store = "{crypto_store}"
            data_key_env = "LIAISON_TEST_DATA_KEY"

            [bot]
            admins = ["{admin}"]
            officers = ["{officer}"]
            sweep_interval = "{sweep_interval}"
            undecryptable_grace = "2s"
            {extra_bot}
            """
        )
        + textwrap.dedent(rooms)
    )
    # The homeserver gate enforces this bot's register from now on.
    server.add_register(register_entry(load_config(path)), data_key=data_key or SECRETS.data_key)


# The managed rooms that the tests, the demo and the benchmarks set up, by key: (name, label).
ROOM_TABLES: dict[str, tuple[str, str]] = {
    "deu": ("DEU national cell", "DEU GEHEIM"),
    "nato-s": ("NATO SECRET liaison", "NATO SECRET"),
    "eu-s": ("EU SECRET liaison", "EU SECRET"),
    "nato-r": ("NATO RESTRICTED desk", "NATO RESTRICTED"),
}
# The NATO room's twice-daily situation digest of what nato-s and deu hold.
NATO_DIGEST = """
[[digests]]
room = "nato-s"
cron = "0 6,18 * * *"
window = "12h"
sources = ["nato-s", "deu"]
"""


def rooms_config(
    *extra_rooms: str, relay_to: Sequence[str] = ("nato-s",), digest: bool = False
) -> str:
    """The rooms part of a config: the national room `deu` and `nato-s`, then `extra_rooms`
    (keys of ROOM_TABLES); the route from deu to `relay_to`; with `digest`, NATO_DIGEST."""
    text = ""
    for key in ("deu", "nato-s", *extra_rooms):
        name, label = ROOM_TABLES[key]
        text += f'\n[[rooms]]\nkey = "{key}"\nname = "{name}"\nlabel = "{label}"\n'
    targets = ", ".join(f'"{key}"' for key in relay_to)
    text += f'\n[[routes]]\nfrom = "deu"\nto = [{targets}]\n'
    return text + (NATO_DIGEST if digest else "")


# deu and nato-s, and the route between them: what most tests and the benchmarks need.
ROOMS = rooms_config()
