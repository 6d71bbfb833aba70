"""The gate's configuration: which bots' registers it enforces, and how fresh its reads are.

Given under ``modules:`` in Synapse's ``homeserver.yaml``. Usually one bot, written flat::

    config:
      bot_user_id: "@liaison:example.org"
      database: "postgresql+psycopg://liaison_gate@db.example.org/liaison"
      register_key: "ed25519:…"
      database_password_file: "/etc/matrix-synapse/liaison-gate.password"  # optional

and printed from the bot's own config by ``liaison-bot gate synapse-config``. Everything
else the gate needs of the bot's config (its admins, admin room and extra caveats) the
running bot publishes into the register (`bot.storage.gate_settings`), signed, so it cannot
drift from the bot's config. Configs written before then carry copies of them
(``admins``, ``admin_room``, ``caveats``): still accepted, used only while the bot has
published nothing (a bot older than this gate), and ignored, once logged, when it has.

Several bots on one homeserver are listed under ``registers:``; ``registers_file`` names a
JSON list of the same entries, read again whenever it changes, for homeservers whose bots
come and go (the test and demo homeservers start many).

``register_key`` is the public half of the key the bot signs its clearance, room and
settings rows with (`bot.storage.store.register_public_key`, derived from the data key). It
is not a secret: it lets the gate check a row, never sign one. With it, a row that does not
verify (an attacker with write access to the database inserted or changed it) admits nobody.
Without it the gate honours rows as stored, for deployments from before rows were signed,
and says so at every start.

No password is ever written into ``homeserver.yaml`` (it is often world-readable, and
copied into bug reports): a ``database`` URL carrying one is refused. The password goes in
``database_password_file`` (a file only Synapse's user can read, holding the password
alone; read at each new connection, never logged), or libpq's own ``PGPASSFILE``/``~/.pgpass``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from bot.config import Config, RoomKey, UserId, _format_error, _Section
from bot.schemes import SchemesFileError, use_schemes_file
from bot.storage.records import RegisterVerifier
from bot.storage.store import register_public_key

MODULE_PATH = "bot.gate.LiaisonGate"
DISTRIBUTION = "liaison-bot"
# Where `gate synapse-config` suggests the password file goes (the admin may choose another).
PASSWORD_FILE_HINT = "/etc/matrix-synapse/liaison-gate.password"


class GateConfigError(ValueError):
    """A gate config that cannot be used; the message names every bad key."""


def _database(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a database URL (postgresql+psycopg://… or sqlite:////abs/path)")
    try:
        parsed = make_url(value)
    except ArgumentError:
        raise ValueError(f"bad database URL {value!r}") from None
    backend = parsed.get_backend_name()
    if parsed.password is not None:
        raise ValueError(
            f"the database URL {_without_password(parsed)} carries a password: never write "
            "one into homeserver.yaml; put it in a file only Synapse's user can read and name "
            "that file in database_password_file (or use libpq's PGPASSFILE / ~/.pgpass)"
        )
    if backend == "sqlite":
        path = parsed.database or ""
        if path in ("", ":memory:") or not os.path.isabs(path):
            raise ValueError(
                f"SQLite register {value!r}: give the absolute path (sqlite:////abs/path.db); "
                "Synapse does not run in the bot's folder"
            )
    elif backend != "postgresql":
        raise ValueError(f"unsupported database {backend!r}: use postgresql or sqlite")
    return value


def _without_password(url: URL) -> str:
    """The URL with its password left out (not masked: nothing of it is shown)."""
    # URL.set(password=None) leaves the password as it is: built again without it.
    bare = URL.create(url.drivername, url.username, None, url.host, url.port, url.database)
    return bare.update_query_dict(dict(url.query)).render_as_string(hide_password=False)


def split_password(database: str) -> tuple[str, bool]:
    """The URL without its password, and whether it had one (what `gate synapse-config`
    prints for a bot whose own URL carries its password)."""
    parsed = make_url(database)
    return _without_password(parsed), parsed.password is not None


def _password_file(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not os.path.isabs(value.strip()):
        raise ValueError(f"give the password file's absolute path, not {value!r}")
    return value.strip()


def read_password_file(path: str) -> str:
    """The password a `database_password_file` holds: its only line, without the line
    end. Errors name the file, never what is in it."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not readable text"
        raise GateConfigError(f"database_password_file {path}: cannot read it: {reason}") from None
    password = raw.removesuffix("\n").removesuffix("\r")
    if not password or "\n" in password or "\r" in password:
        raise GateConfigError(
            f"database_password_file {path}: expected the password alone, on one line"
        )
    return password


def package_version() -> str:
    """This installation's liaison-bot version: the gate's in Synapse's environment, the
    bot's in its own (the bot publishes it; the gate compares)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _register_key(value: Any) -> str | None:
    """The key in its canonical text, checked now: a malformed key found only at the first
    read would leave the gate up but refusing every managed room, far from the cause."""
    if value is None:
        return None
    hint = "liaison-bot gate synapse-config prints it, with the bot's data key set"
    if not isinstance(value, str):
        raise ValueError(f"expected the register's public key as text ('ed25519:…'); {hint}")
    try:
        return RegisterVerifier.from_text(value).text
    except ValueError as exc:
        raise ValueError(f"{exc}, not {value!r}; {hint}") from None


class RegisterSpec(_Section):
    """One bot and the register the gate reads for the rooms it manages."""

    bot_user_id: UserId
    database: str
    # Copies of the bot's settings from before the bot published them (see the module
    # docstring): used only while the register holds no settings row of the bot's.
    admins: list[UserId] = Field(default_factory=list)
    admin_room: RoomKey | None = None
    caveats: list[str] = Field(default_factory=list)
    # The register's public key (`ed25519:…`); None: rows are read unverified.
    register_key: str | None = None
    database_password_file: str | None = None

    @field_validator("database", mode="before")
    @classmethod
    def _check_database(cls, value: Any) -> str:
        return _database(value)

    @field_validator("database_password_file", mode="before")
    @classmethod
    def _check_password_file(cls, value: Any) -> str | None:
        return _password_file(value)

    @model_validator(mode="after")
    def _password_for_postgresql(self) -> RegisterSpec:
        if self.database_password_file is not None and self.database.startswith("sqlite"):
            raise ValueError("database_password_file is for PostgreSQL; SQLite has no password")
        return self

    @property
    def has_copies(self) -> bool:
        """Whether the config carries copies of the bot's settings (an older config)."""
        return bool(self.admins or self.admin_room or self.caveats)

    @field_validator("register_key", mode="before")
    @classmethod
    def _check_register_key(cls, value: Any) -> str | None:
        return _register_key(value)


class GateConfig(_Section):
    """See the module docstring; at least one register, flat or listed, or a file of them."""

    bot_user_id: UserId | None = None
    database: str | None = None
    admins: list[UserId] = Field(default_factory=list)
    admin_room: RoomKey | None = None
    caveats: list[str] = Field(default_factory=list)
    register_key: str | None = None
    database_password_file: str | None = None
    registers: list[RegisterSpec] = Field(default_factory=list)
    registers_file: str | None = None
    # How long a positive read (a room on record, a valid clearance) is reused. A refusal is
    # always read afresh, so a grant counts at once; a revocation counts within this time
    # (and the bot removes the person anyway).
    cache_ttl_seconds: float = Field(default=2.0, ge=0, le=60)
    # The bot's site schemes file (absolute), read at start so that the gate reads room
    # labels with the same schemes as the bot.
    schemes_file: str | None = None

    @field_validator("database", mode="before")
    @classmethod
    def _check_database(cls, value: Any) -> Any:
        return None if value is None else _database(value)

    @field_validator("register_key", mode="before")
    @classmethod
    def _check_register_key(cls, value: Any) -> str | None:
        return _register_key(value)

    @field_validator("database_password_file", mode="before")
    @classmethod
    def _check_password_file(cls, value: Any) -> str | None:
        return _password_file(value)

    @field_validator("registers_file", "schemes_file")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isabs(value):
            raise ValueError(f"give an absolute path, not {value!r}")
        return value

    @model_validator(mode="after")
    def _some_register(self) -> GateConfig:
        flat = (self.bot_user_id is None, self.database is None)
        if flat[0] != flat[1]:
            raise ValueError("bot_user_id and database go together: set both or neither")
        for key in ("register_key", "database_password_file"):
            if all(flat) and getattr(self, key) is not None:
                raise ValueError(
                    f"{key} belongs to the register of bot_user_id and database: set them "
                    f"too, or give {key} inside each entry of registers"
                )
        if all(flat) and not self.registers and self.registers_file is None:
            raise ValueError(
                "no register to enforce: set bot_user_id and database "
                "(or registers, or registers_file)"
            )
        bots = [spec.bot_user_id for spec in self.static_registers()]
        twice = sorted({b for b in bots if bots.count(b) > 1})
        if twice:
            raise ValueError(f"bot {', '.join(twice)} is listed more than once")
        return self

    def static_registers(self) -> list[RegisterSpec]:
        """The registers written into the config itself (the flat one first)."""
        out = list(self.registers)
        if self.bot_user_id is not None and self.database is not None:
            flat = RegisterSpec(
                bot_user_id=self.bot_user_id,
                database=self.database,
                admins=self.admins,
                admin_room=self.admin_room,
                caveats=self.caveats,
                register_key=self.register_key,
                database_password_file=self.database_password_file,
            )
            out.insert(0, flat)
        return out


def parse_gate_config(raw: Any, where: str = "modules[].config") -> GateConfig:
    """Validate the module's config, naming each bad key under `where`."""
    if not isinstance(raw, Mapping):
        raise GateConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    try:
        config = GateConfig.model_validate(dict(raw))
    except ValidationError as exc:
        problems = [f"{where}.{_format_error(err)}" for err in exc.errors()]
        raise GateConfigError("; ".join(problems)) from None
    for spec in config.static_registers():
        if spec.database_password_file is not None:
            read_password_file(spec.database_password_file)  # now, not at the first join
    if config.schemes_file is not None:
        try:
            use_schemes_file(config.schemes_file)
        except SchemesFileError as exc:
            raise GateConfigError(f"{where}.schemes_file: {exc}") from None
    return config


def read_registers_file(path: str | Path) -> list[RegisterSpec]:
    """The entries of a registers file (a JSON list); raises GateConfigError naming the entry."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise GateConfigError(f"{path}: cannot read: {exc}") from None
    if not isinstance(raw, list):
        raise GateConfigError(f"{path}: expected a JSON list of registers")
    specs: list[RegisterSpec] = []
    for i, entry in enumerate(raw):
        try:
            specs.append(RegisterSpec.model_validate(entry))
        except ValidationError as exc:
            problems = [f"{path}[{i}].{_format_error(err)}" for err in exc.errors()]
            raise GateConfigError("; ".join(problems)) from None
    return specs


def register_entry(
    config: Config, database: str | None = None, data_key: str | None = None
) -> dict[str, Any]:
    """The register a bot's config describes, as the gate reads it: the bot's user id, its
    database (absolute; or `database`, e.g. a read-only role's URL) without a password, and,
    given the bot's data key, the public key its rows verify with (the data key itself is
    never written: only its public derivative is). A URL that carried a password gets a
    `database_password_file` for it instead (PASSWORD_FILE_HINT: where the admin puts it).

    The bot's admins, admin room and caveats are not copied: the bot publishes them into
    the register at every start (`bot.gate.publish`)."""
    url, had_password = split_password(database or config.database_url())
    entry: dict[str, Any] = {"bot_user_id": str(config.homeserver.user_id), "database": url}
    if data_key:
        entry["register_key"] = register_public_key(data_key)
    if had_password:
        entry["database_password_file"] = PASSWORD_FILE_HINT
    try:
        RegisterSpec.model_validate(entry)  # what is printed must load
    except ValidationError as exc:
        raise GateConfigError("; ".join(_format_error(err) for err in exc.errors())) from None
    return entry


def module_entry(
    registers: Sequence[Mapping[str, Any]], schemes_file: str | None = None
) -> dict[str, Any]:
    """The `modules:` list item for homeserver.yaml (with the site schemes file, if any)."""
    if len(registers) == 1:
        config = dict(registers[0])
    else:
        config = {"registers": [dict(r) for r in registers]}
    if schemes_file is not None:
        config["schemes_file"] = schemes_file
    return {"module": MODULE_PATH, "config": config}


__all__ = [
    "DISTRIBUTION",
    "MODULE_PATH",
    "PASSWORD_FILE_HINT",
    "GateConfig",
    "GateConfigError",
    "RegisterSpec",
    "module_entry",
    "package_version",
    "parse_gate_config",
    "read_password_file",
    "read_registers_file",
    "register_entry",
    "split_password",
]
