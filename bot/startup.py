"""What the bot needs before it can start: its secrets, and the error that stops it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from bot.config import Config


class StartupError(Exception):
    """The bot cannot start; the message says what to fix."""


@dataclass(frozen=True)
class Secrets:
    """Read from the environment only (never the config file), all at once, so a missing
    one stops the bot before it touches the homeserver."""

    pickle_key: str
    data_key: str
    password: str | None
    access_token: str | None
    feed_tokens: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, config: Config, environ: dict[str, str] | None = None) -> Secrets:
        env = dict(os.environ if environ is None else environ)
        missing = config.missing_secrets(env)
        if missing:
            raise StartupError("missing secrets, refusing to start: " + "; ".join(missing))
        hs = config.homeserver
        return cls(
            pickle_key=env[hs.pickle_key_env],
            data_key=env[config.storage.data_key_env],
            password=env.get(hs.password_env) if hs.password_env else None,
            access_token=env.get(hs.access_token_env) if hs.access_token_env else None,
            feed_tokens={
                f.key: env[f.token_env] for f in (config.ingest.feeds if config.ingest else ())
            },
        )
