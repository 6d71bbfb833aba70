"""What the bot needs before it can start: its secrets, and the error that stops it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from bot.config import Config

# The pickle and data keys are used as they are: HKDF (bot/storage/sealing.py) and the crypto
# store's pickling do no key stretching, so a passphrase-like key could be guessed offline
# from a copy of the database. Refuse short keys; `openssl rand -hex 32` (64 characters) or
# `python3 -c "import secrets; print(secrets.token_urlsafe(32))"` (43) make good ones.
MIN_KEY_CHARS = 32
KEY_RULE = f"at least {MIN_KEY_CHARS} characters, random (e.g. `openssl rand -hex 32`)"


class StartupError(Exception):
    """The bot cannot start; the message says what to fix."""


@dataclass(frozen=True)
class Secrets:
    """Read from the environment only (never the config file), all at once, so a missing
    one stops the bot before it touches the homeserver. Its repr (and str) never shows a
    secret value, only whether it is set."""

    pickle_key: str = field(repr=False)
    data_key: str = field(repr=False)
    password: str | None = field(repr=False)
    access_token: str | None = field(repr=False)
    feed_tokens: dict[str, str] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        def shown(value: str | None) -> str:
            return "None" if value is None else "<hidden>"

        feeds = ", ".join(f"{key!r}: <hidden>" for key in self.feed_tokens)
        return (
            f"Secrets(pickle_key={shown(self.pickle_key)}, data_key={shown(self.data_key)}, "
            f"password={shown(self.password)}, access_token={shown(self.access_token)}, "
            f"feed_tokens={{{feeds}}})"
        )

    __str__ = __repr__

    @classmethod
    def from_env(cls, config: Config, environ: dict[str, str] | None = None) -> Secrets:
        env = dict(os.environ if environ is None else environ)
        missing = config.missing_secrets(env)
        if missing:
            raise StartupError("missing secrets, refusing to start: " + "; ".join(missing))
        hs = config.homeserver
        weak = [
            f"{path}: environment variable {name} is too short ({len(env[name])} characters); "
            f"the key must be {KEY_RULE}"
            for path, name in (
                ("homeserver.pickle_key_env", hs.pickle_key_env),
                ("storage.data_key_env", config.storage.data_key_env),
            )
            if len(env[name]) < MIN_KEY_CHARS
        ]
        if weak:
            raise StartupError("weak keys, refusing to start: " + "; ".join(weak))
        return cls(
            pickle_key=env[hs.pickle_key_env],
            data_key=env[config.storage.data_key_env],
            password=env.get(hs.password_env) if hs.password_env else None,
            access_token=env.get(hs.access_token_env) if hs.access_token_env else None,
            feed_tokens={
                f.key: env[f.token_env] for f in (config.ingest.feeds if config.ingest else ())
            },
        )


def read_data_key(config: Config) -> str | None:
    """The data key for an offline command (the CLI), or None where it is not given: the
    CLI reads without it and refuses, by name, what needs it. One place reads it, so every
    way of giving a secret (environment variable, file) works for every command."""
    return os.environ.get(config.storage.data_key_env) or None


def read_pickle_key(config: Config) -> str | None:
    """The pickle key for an offline command (the CLI), as `read_data_key`."""
    return os.environ.get(config.homeserver.pickle_key_env) or None
