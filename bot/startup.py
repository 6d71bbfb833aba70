"""What the bot needs before it can start: its secrets (from environment variables or
files), and the error that stops it."""

from __future__ import annotations

import hmac
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bot.config import Config, SecretSource

# The pickle and data keys are used as they are: HKDF (bot/storage/sealing.py) and the crypto
# store's pickling do no key stretching, so a passphrase-like key could be guessed offline
# from a copy of the database. Refuse short keys; `openssl rand -hex 32` (64 characters) or
# `python3 -c "import secrets; print(secrets.token_urlsafe(32))"` (43) make good ones.
MIN_KEY_CHARS = 32
KEY_RULE = f"at least {MIN_KEY_CHARS} characters, random (e.g. `openssl rand -hex 32`)"


class StartupError(Exception):
    """The bot cannot start; the message says what to fix."""


# systemd's LoadCredential= puts credentials here, owned by the service's user and managed by
# systemd (their mode is systemd's business, not the administrator's).
CREDENTIALS_DIR = Path("/run/credentials")


class SecretError(StartupError):
    """Secrets that cannot be used; `problems` lists each, naming its key (never a value).
    The message groups them as the bot refuses them: missing, unusable files, weak keys."""

    def __init__(
        self,
        missing: list[str],
        files: list[str],
        weak: list[str],
        action: str = "refusing to start",
    ) -> None:
        self.problems = [*missing, *files, *weak]
        parts = [
            f"{title}, {action}: " + "; ".join(items)
            for title, items in (
                ("missing secrets", missing),
                ("unusable secret files", files),
                ("weak keys", weak),
            )
            if items
        ]
        super().__init__(" / ".join(parts))


# A key, a password or a token is a line; anything much longer is the wrong file (a log, a
# disk image): refused before it is read into memory.
MAX_SECRET_BYTES = 64 * 1024


def read_secret_file(source: SecretSource) -> str:
    """A secret from a file: one trailing newline stripped (`echo` and editors add one);
    refused, naming the key and the path, when missing, unreadable, not a regular file,
    larger than MAX_SECRET_BYTES, empty, or readable by group or others (outside systemd's
    credentials folder). Raises ValueError; the message never holds the file's contents.

    The file is opened once, without blocking (a FIFO or a device named by mistake, or
    planted, would otherwise hang the start for ever) and without becoming a controlling
    terminal, and every check is made on that open descriptor (fstat, and the path it
    really opened), so the file cannot be swapped between the check and the read.

    A path in another unit's credentials folder that is not there is looked up by name in
    this process's own (`$CREDENTIALS_DIRECTORY`): an offline command started with
    `systemd-run -p LoadCredential=…` gets the key under its own unit's name."""
    path = Path(source.name)
    own = os.environ.get("CREDENTIALS_DIRECTORY")
    if own and path.is_relative_to(CREDENTIALS_DIR) and not path.exists():
        path = Path(own) / path.name
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ValueError(f"{source.key}: no such file {path}") from None
    except OSError as exc:
        raise ValueError(f"{source.key}: cannot read {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            raise ValueError(f"{source.key}: cannot read {path}: Is a directory")
        if not stat.S_ISREG(mode):
            raise ValueError(f"{source.key}: {path} is not a regular file")
        if mode & 0o077 and not _opened_path(fd, path).is_relative_to(CREDENTIALS_DIR):
            raise ValueError(
                f"{source.key}: {path} is readable by others than its owner "
                f"(mode {stat.S_IMODE(mode):04o}): chmod 600 {path}"
            )
        if info.st_size > MAX_SECRET_BYTES:
            raise ValueError(
                f"{source.key}: {path} is too large for a secret ({info.st_size} bytes, at "
                f"most {MAX_SECRET_BYTES}): is it the right file?"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_SECRET_BYTES:  # the file may grow after fstat: bounded anyway
            chunk = os.read(fd, MAX_SECRET_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ValueError(f"{source.key}: cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_SECRET_BYTES:
        raise ValueError(
            f"{source.key}: {path} is too large for a secret (more than {MAX_SECRET_BYTES} "
            "bytes): is it the right file?"
        )
    data = b"".join(chunks)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{source.key}: {path} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError(f"{source.key}: {path} is empty")
    return text


def _opened_path(fd: int, path: Path) -> Path:
    """The file the descriptor really is (Linux names it in /proc), not what the path
    resolves to now: a symlink swapped after the open cannot place a file elsewhere into
    the credentials folder's exemption."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:  # no /proc (another system): the path as it resolves
        return path.resolve()


def _read_all(
    config: Config, environ: Mapping[str, str]
) -> tuple[dict[str, str], list[str], list[str]]:
    """Every secret that can be read, and the problems of the others (missing, files)."""
    values: dict[str, str] = {}
    missing: list[str] = []
    files: list[str] = []
    for name, source in config.secret_sources().items():
        if source.kind == "env":
            value = environ.get(source.name)
            if value:
                values[name] = value
            else:
                missing.append(f"{source.describe} is not set")
            continue
        try:
            values[name] = read_secret_file(source)
        except ValueError as exc:
            files.append(str(exc))
    return values, missing, files


@dataclass(frozen=True)
class Secrets:
    """Read from environment variables or files (never the config file), all at once, so a
    missing one stops the bot before it touches the homeserver. Its repr (and str) never
    shows a secret value, only whether it is set."""

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
    def from_env_or_files(cls, config: Config, environ: Mapping[str, str] | None = None) -> Secrets:
        """Every secret the config names, from its variable or its `_file`; raises
        SecretError listing every problem at once (`check-config` runs the same)."""
        env = os.environ if environ is None else environ
        values, missing, files = _read_all(config, env)
        sources = config.secret_sources()
        weak = [
            f"{sources[name].describe} is too short ({len(values[name])} characters); "
            f"the key must be {KEY_RULE}"
            for name in ("pickle_key", "data_key")
            if name in values and len(values[name]) < MIN_KEY_CHARS
        ]
        # The config refuses one variable or path for both keys; two paths to one file (a
        # symlink, a hard link, a copy) or two variables holding one value are caught here,
        # by the values: one key for both would lose the separation the two were made for.
        pickle, data = values.get("pickle_key"), values.get("data_key")
        if (
            pickle is not None
            and data is not None
            and hmac.compare_digest(pickle.encode(), data.encode())
        ):
            weak.append(
                f"{sources['pickle_key'].describe}, {sources['data_key'].describe}: the pickle "
                "key and the data key are the same key; give each its own"
            )
        if missing or files or weak:
            raise SecretError(missing, files, weak)
        return cls(
            pickle_key=values["pickle_key"],
            data_key=values["data_key"],
            password=values.get("password"),
            access_token=values.get("access_token"),
            feed_tokens={
                name.removeprefix("feed:"): value
                for name, value in values.items()
                if name.startswith("feed:")
            },
        )


def _read_key(config: Config, name: str) -> str | None:
    source = config.secret_sources()[name]
    if source.kind == "env":
        return os.environ.get(source.name) or None
    try:
        return read_secret_file(source)
    except ValueError as exc:
        raise SecretError([], [str(exc)], [], action="cannot read the key") from None


def read_data_key(config: Config) -> str | None:
    """The data key for an offline command (the CLI), or None where its variable is not
    set: the CLI reads without it and refuses, by name, what needs it. A configured
    `data_key_file` that cannot be used raises SecretError naming key and path. One place
    reads it, so every way of giving a secret works for every command."""
    return _read_key(config, "data_key")


def read_pickle_key(config: Config) -> str | None:
    """The pickle key for an offline command (the CLI), as `read_data_key`."""
    return _read_key(config, "pickle_key")
