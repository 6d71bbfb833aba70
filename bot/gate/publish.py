"""The bot's side of the gate's settings: what it publishes into the register at start.

The gate in Synapse reads the bot's admins, admin room and extra caveats from the register
(`bot.storage.gate_settings`) rather than from copies in homeserver.yaml, which drifted
whenever the bot's config changed. They come from the bot's config, which only a restart
changes, so publishing once at every start keeps them current. The version and schema
revision go with them, so the gate can say when it and the bot were upgraded separately.
"""

from __future__ import annotations

from bot.config import Config
from bot.gate.config import package_version
from bot.storage import Store
from bot.storage.gate_settings import GateSettings, publish_gate_settings
from bot.storage.models import SCHEMA_HEAD


def gate_settings_of(config: Config) -> GateSettings:
    """The settings the bot's config gives the gate, with this installation's version and
    the schema revision this code runs."""
    return GateSettings.of(
        str(config.homeserver.user_id),
        [str(a) for a in config.bot.admins],
        str(config.bot.admin_room) if config.bot.admin_room else None,
        list(config.bot.caveats),
        package_version(),
        SCHEMA_HEAD,
    )


def publish_settings(store: Store, config: Config) -> bool:
    """Publish (signed, audited when changed) what the gate needs of `config`; whether it
    changed. Run in a worker thread (`in_thread`): it is one transaction."""
    return publish_gate_settings(store, gate_settings_of(config))


__all__ = ["gate_settings_of", "publish_settings"]
