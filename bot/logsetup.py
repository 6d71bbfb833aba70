"""Logging for `liaison-bot run`, from the config's `[logging]` section.

Standard error always (systemd's journal and container runtimes collect it), and a file too
where one is set; text for people, or JSON (one object per line) for a log collector. The
libraries under the bot (nio, aiohttp, peewee, Alembic) log every request or migration step
at INFO: they are held at WARNING unless the level is debug, so an administrator's log
shows what the bot did, not how. Message text and secrets are never logged by the bot at
any level; this module only decides where the lines go.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import platform
import socket
import stat
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from sqlalchemy.engine import make_url

from bot.config import Config

NOISY = ("nio", "peewee", "aiohttp", "alembic")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, and the
    exception's text when there is one. A record's message is formatted here (its args
    applied) exactly as the text form does, so both forms say the same."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


class PrivateFileHandler(logging.FileHandler):
    """A log file only its owner reads: created 0600 (whatever the umask), an existing one
    stripped of the bits that let anyone else read it, never followed through a symlink.
    Why: the log names people, rooms and decisions, which is nobody else's business on the
    host; and a symlink planted where the log goes must not make the bot append to (or
    create) a file of the attacker's choosing."""

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.baseFilename, flags, 0o600)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise OSError(
                errno.ELOOP, "it is a symbolic link: give the real file's path", self.baseFilename
            ) from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise OSError(errno.EINVAL, "not a regular file", self.baseFilename)
            if mode & 0o007:
                os.fchmod(fd, stat.S_IMODE(mode) & ~0o007)
            return open(fd, "a", encoding=self.encoding, errors=self.errors)  # the handler keeps it
        except BaseException:
            os.close(fd)
            raise


def configure_logging(config: Config, verbose: bool = False) -> int:
    """Set up the root logger from `[logging]` (`verbose`: debug, as `run -v`); returns the
    level. Replaces handlers set earlier (a second call in one process, as tests make)."""
    level = logging.DEBUG if verbose else _LEVELS[config.logging.level]
    formatter: logging.Formatter = (
        JsonFormatter() if config.logging.format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    log_file = config.log_file()
    if log_file is not None:
        handlers.append(PrivateFileHandler(log_file, mode="a", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=handlers, force=True)
    for name in NOISY:
        logging.getLogger(name).setLevel(
            logging.DEBUG if level <= logging.DEBUG else logging.WARNING
        )
    # A level set earlier on one of their children (`db upgrade` shows Alembic's migration
    # lines) would outrank the parent's: the parent's level decides again.
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.startswith(tuple(f"{n}." for n in NOISY)):
            logger.setLevel(logging.NOTSET)
    return level


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def safe_database_url(url: str) -> str:
    """The database URL with any password masked (the config refuses one; a URL from
    elsewhere may carry it)."""
    return make_url(url).render_as_string(hide_password=True)


def banner(config: Config, config_path: str | Path) -> str:
    """The first line `run` logs: what runs, on which versions, where. No secrets."""
    node = config.ha.node if config.ha.enabled and config.ha.node else socket.gethostname()
    return (
        f"liaison-bot {_version('liaison-bot')} (Python {platform.python_version()}, "
        f"matrix-nio {_version('matrix-nio')}, vodozemac {_version('vodozemac')}) starting: "
        f"node {node}, database {safe_database_url(config.database_url())}, "
        f"config {Path(config_path).resolve()}"
    )
