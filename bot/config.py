"""Configuration: the TOML file, validated by pydantic, every error with its key.

Why two passes: pydantic reports every field error with its location, but a model-level
check runs only when all fields are valid. Cross-references (routes and digests naming room
keys) are checked on the raw document as well, so one run lists every error at once.
Secrets are never written in the file: each `*_env` key names an environment variable, each
`*_file` twin a file (systemd credentials, container secrets) that holds one; both are read
at start (bot/startup.py), the config only says where.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import ssl
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url

from bot.schedule import cron_trigger, parse_duration
from bot.schemes import SchemesFileError, use_schemes_file
from commands.registry import ROOM_KEY as _ROOM_KEY
from commands.registry import USER_ID as _USER_ID
from policy import (
    Label,
    Level,
    MarkingError,
    Room,
    ids,
    known_caveats,
    make_room,
    parse_audience,
    parse_marking,
    server_of,
)
from policy import current as current_catalogue
from policy.labels import level_candidates

# A server name as in a user id: DNS name, IPv4 or [IPv6], optional port.
_SERVER_NAME = re.compile(r"^(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z")

SECRET_KEYS = {
    "password": "password_env",
    "access_token": "access_token_env",
    "pickle_key": "pickle_key_env",
    "data_key": "data_key_env",
    "token": "token_env",
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+\Z")


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    try:
        return parse_duration(value)
    except OverflowError:  # timedelta's own limit (999 999 999 days); pydantic wants ValueError
        raise ValueError(f"bad duration {value!r}: too long") from None


Duration = Annotated[timedelta, BeforeValidator(_duration)]


def _user_id(value: Any) -> ids.UserId:
    if not isinstance(value, str) or not _USER_ID.match(value):
        raise ValueError(f"bad Matrix user id {value!r}: expected '@name:server'")
    return ids.UserId(value)


UserId = Annotated[ids.UserId, BeforeValidator(_user_id)]


def _env_name(value: Any) -> str:
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise ValueError(f"bad environment variable name {value!r}")
    return value


EnvName = Annotated[str, BeforeValidator(_env_name)]


def _secret_path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise ValueError(f"bad secret file path {value!r}: give the file's path")
    return value.strip()


SecretPath = Annotated[str, BeforeValidator(_secret_path)]


@dataclass(frozen=True)
class SecretSource:
    """Where one secret comes from: `key` is the config key naming it (`…_env` or
    `…_file`), `name` the environment variable or the file's absolute path."""

    key: str
    kind: Literal["env", "file"]
    name: str

    @property
    def describe(self) -> str:
        what = "environment variable" if self.kind == "env" else "file"
        return f"{self.key}: {what} {self.name}"


def _one_source(section: BaseModel, env_key: str, file_key: str, *, required: bool = True) -> None:
    """`X_env` set explicitly and `X_file` too is refused (which would win?); a `_file`
    replaces an `_env` default. `required`: one of the two must be given."""
    env, file = getattr(section, env_key), getattr(section, file_key)
    if file is not None and env_key in section.model_fields_set:
        raise ValueError(f"{env_key}, {file_key}: set one of the two, not both")
    if required and env is None and file is None:
        raise ValueError(f"set {env_key} or {file_key}")


def _room_key(value: Any) -> ids.RoomKey:
    if not isinstance(value, str) or not _ROOM_KEY.match(value):
        raise ValueError(
            f"bad room key {value!r}: 1-32 characters of a-z, 0-9, '-' and '_', "
            "starting with a letter or digit"
        )
    return ids.RoomKey(value)


RoomKey = Annotated[ids.RoomKey, BeforeValidator(_room_key)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class HomeserverConfig(_Section):
    url: str
    user_id: UserId
    password_env: EnvName | None = None
    password_file: SecretPath | None = None
    access_token_env: EnvName | None = None
    access_token_file: SecretPath | None = None
    pickle_key_env: EnvName = "LIAISON_PICKLE_KEY"
    pickle_key_file: SecretPath | None = None
    device_name: str = "liaison-bot"
    device_trust: Literal["cross-signed", "tofu"] = "cross-signed"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"bad homeserver url {value!r}: expected http(s)://host[:port]")
        parts = urlsplit(value)
        if "@" in parts.netloc or parts.query or parts.fragment:
            # Credentials or a token in the url would be logged with it (each start-up
            # attempt names the homeserver): refused without echoing the value.
            raise ValueError(
                "bad homeserver url: no user, password, query or fragment (the url is "
                "logged; the bot's credentials go in password_env/access_token_env or their "
                "*_file twins); expected http(s)://host[:port]"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_credential(self) -> HomeserverConfig:
        if (
            self.password_env is None
            and self.access_token_env is None
            and self.password_file is None
            and self.access_token_file is None
        ):
            raise ValueError(
                "set password_env or access_token_env, or their *_file twins (the bot must log in)"
            )
        _one_source(self, "password_env", "password_file", required=False)
        _one_source(self, "access_token_env", "access_token_file", required=False)
        _one_source(self, "pickle_key_env", "pickle_key_file")
        return self


# `storage.crypto_store` set to this keeps nio's crypto store in the (PostgreSQL) database
# instead of a folder: both processes of a high-availability pair need the same one.
CRYPTO_STORE_DATABASE = "database"


class StorageConfig(_Section):
    database_url: str = "sqlite:///data/liaison.db"
    # A folder (relative to the config's), or CRYPTO_STORE_DATABASE.
    crypto_store: str = "data/crypto"
    data_key_env: EnvName = "LIAISON_DATA_KEY"
    data_key_file: SecretPath | None = None

    @model_validator(mode="after")
    def _data_key_source(self) -> StorageConfig:
        _one_source(self, "data_key_env", "data_key_file")
        return self

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except Exception:  # sqlalchemy raises ArgumentError, or ValueError on a bad port
            raise ValueError(f"bad database_url {value!r}") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(
                f"unsupported database {url.get_backend_name()!r} in database_url: "
                "use sqlite:///… or postgresql+psycopg://…"
            )
        if url.password:
            raise ValueError("database_url must not hold a password: use a .pgpass file")
        return value

    @field_validator("crypto_store")
    @classmethod
    def _crypto_store(cls, value: str, info: ValidationInfo) -> str:
        """The database store is PostgreSQL's only (bot/matrix/dbstore.py): on SQLite the
        folder store does the same job, and a pair of bots cannot share a SQLite file."""
        if value != CRYPTO_STORE_DATABASE or "database_url" not in info.data:
            return value  # a bad database_url is reported on its own
        backend = make_url(info.data["database_url"]).get_backend_name()
        if backend != "postgresql":
            raise ValueError(
                f'"{CRYPTO_STORE_DATABASE}" keeps the crypto store in the database, which '
                f"needs PostgreSQL: database_url is {backend} (use a folder, e.g. "
                '"data/crypto", or a postgresql+psycopg:// database_url)'
            )
        return value


class BotConfig(_Section):
    command_prefixes: list[str] = Field(default_factory=lambda: ["!", "/"], min_length=1)
    admins: list[UserId] = Field(default_factory=list)
    officers: list[UserId] = Field(default_factory=list)
    caveats: list[str] = Field(default_factory=list)
    timezone: str = "UTC"
    # the key of a managed room (its label applies) for admin alerts; admins only
    admin_room: RoomKey | None = None
    sweep_interval: Duration = timedelta(minutes=5)
    digest_catchup_grace: Duration = timedelta(hours=2)
    undecryptable_grace: Duration = timedelta(seconds=60)
    dm_join_timeout: Duration = timedelta(minutes=10)
    # A site schemes file (TOML, the packaged file's [[schemes]] form) adding or overriding
    # national schemes; relative to the config file. Read and installed before the rooms'
    # labels are read.
    schemes_file: str | None = None

    @field_validator("schemes_file")
    @classmethod
    def _schemes_file(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("empty: give the site schemes file's path, or leave the key out")
        return value.strip() if value is not None else None

    @field_validator("command_prefixes")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        for prefix in value:
            if not prefix or len(prefix) > 3 or any(c.isspace() or c.isalnum() for c in prefix):
                raise ValueError(f"bad command prefix {prefix!r}: 1-3 punctuation characters")
        return value

    @field_validator("caveats")
    @classmethod
    def _caveats(cls, value: list[str]) -> list[str]:
        for word in value:
            if not re.match(r"^[A-Za-z][A-Za-z0-9-]{1,31}$", word):
                raise ValueError(f"bad caveat {word!r}: one word of letters, digits and '-'")
        return [w.upper() for w in value]

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder, a long name
            raise ValueError(f"unknown timezone {value!r} (e.g. 'UTC', 'Europe/Berlin')") from None
        return value


class MetricsConfig(_Section):
    bind: str = "127.0.0.1:9464"

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        return _host_port(value)


def _host_port(value: str) -> str:
    """'host:port'; port 0 takes any free port when the listener starts (it logs which)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not int(port) < 65536:
        raise ValueError(f"bad bind address {value!r}: expected 'host:port'")
    return value


class RoomConfig(_Section):
    key: RoomKey
    name: str = Field(min_length=1, max_length=200)
    label: str
    room_id: ids.RoomId | None = None
    audience: list[str] | None = None
    # Homeservers members may come from (server names as in user ids, port included);
    # default: the bot's own. Also the room's m.room.server_acl (hosts, no ports).
    servers: list[str] | None = None
    _label: Label = PrivateAttr()

    @field_validator("label")
    @classmethod
    def _parse_label(cls, value: str, info: ValidationInfo) -> str:
        _room_label(value, info)
        return value

    @field_validator("room_id")
    @classmethod
    def _room_id(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^!\S+:\S+$", value):
            raise ValueError(f"bad room id {value!r}: expected '!id:server'")
        return value

    @field_validator("servers")
    @classmethod
    def _servers(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("name at least one homeserver (the bot's own is the default)")
        for server in value:
            if not isinstance(server, str) or not _SERVER_NAME.match(server):
                raise ValueError(
                    f"bad server name {server!r}: expected a host name or IP literal, "
                    "with an optional :port (as in a user id)"
                )
        return sorted(set(value))

    @field_validator("audience")
    @classmethod
    def _audience(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        if "label" not in info.data:
            return value  # the label's own error is reported; nothing to narrow against
        try:
            make_room(_room_label(info.data["label"], info), _audience_tokens(value))
        except MarkingError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _keep_label(self, info: ValidationInfo) -> RoomConfig:
        self._label = _room_label(self.label, info)
        return self

    @property
    def parsed_label(self) -> Label:
        return self._label

    def policy_room(self, home: str | None = None) -> Room:
        """The room as the rules see it; `home` (the bot's server) is the default server."""
        tokens = _audience_tokens(self.audience) if self.audience is not None else None
        servers = self.servers if self.servers is not None else ([home] if home else None)
        return make_room(self._label, tokens, servers)


def _room_label(value: str, info: ValidationInfo) -> Label:
    caveats = (info.context or {}).get("caveats", ())
    try:
        label = parse_marking(value, extra_caveats=caveats)
    except MarkingError as exc:
        raise ValueError(str(exc)) from None
    return label


def _audience_tokens(values: Iterable[str]) -> tuple[str, ...]:
    try:
        return tuple(parse_audience(values))
    except MarkingError as exc:
        raise ValueError(str(exc)) from None


# The longest a held item waits for its second officer: a release decision taken a week
# later is taken on a situation that has moved on; the sender should send again.
MAX_APPROVAL_TIMEOUT = timedelta(days=7)
_APPROVAL_KEYS = ("approval_from", "approvers", "approval_timeout")


@dataclass(frozen=True)
class ReleasePolicy:
    """What a route's national release control asks of an item (four eyes): items at or
    above `from_rank` of the source room's scheme (None: every item) are held until one of
    `approvers` (never the sender; the service checks clearance and device) approves, and
    expire unsent after `timeout`."""

    from_rank: int | None
    approvers: frozenset[str]
    timeout: timedelta

    def holds(self, rank: int) -> bool:
        """Whether an item of this rank (in the source room's scheme) waits for approval."""
        return self.from_rank is None or rank >= self.from_rank


class RouteConfig(_Section):
    """`[[routes]]`: a source room's items go to the target rooms the rules allow;
    `approval = "second-officer"` holds them for a second officer's release first."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    source: RoomKey = Field(alias="from")
    to: list[RoomKey] = Field(min_length=1)
    approval: Literal["none", "second-officer"] = "none"
    # A level of the source room's scheme (checked against the rooms: `_approval_errors`);
    # none: every item on the route waits.
    approval_from: str | None = None
    approvers: list[UserId] | None = None  # none: [bot] officers
    approval_timeout: Duration = timedelta(hours=4)

    @field_validator(*_APPROVAL_KEYS, mode="before")
    @classmethod
    def _only_with_approval(cls, value: Any, info: ValidationInfo) -> Any:
        """Release settings on a route without approval would look like a control that is
        not there: refused, naming the key."""
        # A key left out is not validated: only a given one is refused. An invalid
        # `approval` is missing from `info.data` and reported on its own.
        if info.data.get("approval") == "none":
            raise ValueError(
                'only with approval = "second-officer" (this route has no release approval)'
            )
        return value

    @field_validator("approval_from")
    @classmethod
    def _approval_from(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("empty: give a level of the source room's scheme, or leave it out")
        return value

    @field_validator("approvers")
    @classmethod
    def _approvers(cls, value: list[ids.UserId] | None) -> list[ids.UserId] | None:
        if value is not None and not value:
            raise ValueError(
                "empty: nobody could release the route's items; name the approvers, or leave "
                "the key out for [bot] officers"
            )
        return value

    @field_validator("approval_timeout")
    @classmethod
    def _approval_timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= MAX_APPROVAL_TIMEOUT:
            raise ValueError("must be above 0 and at most 7d")
        return value


class DigestConfig(_Section):
    room: RoomKey
    cron: str
    window: Duration = timedelta(hours=24)
    sources: list[RoomKey] | None = None
    # With each part, an encrypted picture of its items per hour (bot/services/digest_chart.py).
    chart: bool = True

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        cron_trigger(value, "UTC")
        return value


class FeedConfig(_Section):
    key: RoomKey
    room: RoomKey
    token_env: EnvName | None = None
    token_file: SecretPath | None = None
    release: bool = False

    @model_validator(mode="after")
    def _token_source(self) -> FeedConfig:
        _one_source(self, "token_env", "token_file")
        return self


class IngestConfig(_Section):
    bind: str = "127.0.0.1:9465"
    feeds: list[FeedConfig] = Field(default_factory=list)

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        return _host_port(value)


# A node's sessions are named `liaison-bot/<node>/e<epoch>` (PostgreSQL keeps 63 bytes of an
# application_name): 40 characters leave room for any epoch.
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}\Z")


class HaConfig(_Section):
    """An active and standby processes on one PostgreSQL (README "High availability").

    The timings must nest: a renewal may fail once and the next still land before the
    self-fence time (renew × 2 < self_fence), and a process fences itself before its lease
    can be taken (self_fence < lease), so two never act at once."""

    enabled: bool = False
    node: str | None = None
    lease: Duration = timedelta(seconds=3)
    renew: Duration = timedelta(milliseconds=500)
    self_fence: Duration = timedelta(seconds=2)

    @field_validator("node")
    @classmethod
    def _node(cls, value: str | None) -> str | None:
        if value is not None and not _NODE.match(value):
            raise ValueError(
                f"bad node name {value!r}: 1-40 characters of A-Z, a-z, 0-9, '.', '_' and '-'"
            )
        return value

    @model_validator(mode="after")
    def _nested(self) -> HaConfig:
        if self.enabled and self.node is None:
            raise ValueError("node: required when enabled (a name for this process, e.g. 'a')")
        if self.renew * 2 >= self.self_fence:
            raise ValueError(
                f"renew: twice the renewal interval ({self.renew.total_seconds():g}s) must be "
                f"below self_fence ({self.self_fence.total_seconds():g}s)"
            )
        if self.self_fence >= self.lease:
            raise ValueError(
                f"self_fence: must be below the lease ({self.lease.total_seconds():g}s), so a "
                "process stops before its lease can be taken"
            )
        return self


# RFC 5424's PRINTUSASCII (%d33-126): a syslog HOSTNAME is 1-255 of them.
_PRINTUSASCII = re.compile(r"^[\x21-\x7e]{1,255}\Z")
# A host as a TLS client names it: DNS name or IP literal (IPv6 in brackets in a target).
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?|[0-9A-Fa-f:.]+)\Z")


class SiemConfig(_Section):
    """`[siem]`: every audit row, as it is written, to the SOC's SIEM as RFC 5424 syslog over
    TLS (RFC 5425); README "Audit to a SIEM". The files are read at start (they must load
    as PEM certificates and key), so a wrong path stops the start, naming its key, rather
    than turning into an outage that retries for ever."""

    target: str  # "host:port" (6514 is syslog over TLS)
    server_name: str | None = None  # the name the receiver's certificate must carry
    ca_file: str | None = None  # none: the system's trusted CAs
    cert_file: str | None = None
    key_file: str | None = None
    format: Literal["ocsf", "cef"] = "ocsf"
    batch: StrictInt = Field(default=200, ge=1, le=10_000)
    retry_max: Duration = timedelta(seconds=60)
    alert_after: Duration = timedelta(minutes=10)
    start: Literal["beginning", "now"] = "beginning"
    markings: Literal["level", "full", "none"] = "level"
    hostname: str | None = None  # the syslog HOSTNAME; none: this host's name

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if (
            not sep
            or not _HOST.match(bare)
            or not (port.isascii() and port.isdigit())
            or not 0 < int(port) < 65536
        ):
            raise ValueError(
                f"bad target {value!r}: expected 'host:port', e.g. 'siem.example.org:6514'"
            )
        return value

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str | None) -> str | None:
        if value is not None and not _HOST.match(value):
            raise ValueError(f"bad server name {value!r}: expected a DNS name or IP address")
        return value

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        if value is not None and not _PRINTUSASCII.match(value):
            raise ValueError(
                f"bad hostname {value!r}: 1-255 printable ASCII characters without spaces "
                "(RFC 5424 HOSTNAME)"
            )
        return value

    @field_validator("retry_max")
    @classmethod
    def _retry_max(cls, value: timedelta) -> timedelta:
        if not timedelta(milliseconds=200) <= value <= timedelta(hours=1):
            raise ValueError(
                "must be between 0.2s (the first retry's delay) and 1h (a longer wait would "
                "leave a recovered SIEM without the audit for as long)"
            )
        return value

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("empty: give the file's path, or leave the key out")
        path = _config_path(value, info)
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except FileNotFoundError:
            raise ValueError(f"no such file: {path}") from None
        except IsADirectoryError:
            raise ValueError(f"{path} is a folder, not a file") from None
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        if info.field_name == "ca_file":
            try:
                ssl.create_default_context(cafile=str(path))
            except ssl.SSLError as exc:
                raise ValueError(f"{path} holds no PEM CA certificate: {exc}") from None
        return value

    @model_validator(mode="after")
    def _client_pair(self, info: ValidationInfo) -> SiemConfig:
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = (
                ("cert_file", "key_file") if self.key_file is None else ("key_file", "cert_file")
            )
            raise ValueError(f"{missing}: required with {given} (a client certificate and its key)")
        if self.cert_file is not None and self.key_file is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            try:
                context.load_cert_chain(
                    _config_path(self.cert_file, info),
                    _config_path(self.key_file, info),
                    password=_no_passphrase,
                )
            except (ssl.SSLError, ValueError) as exc:
                raise ValueError(
                    f"cert_file, key_file: do not load as a certificate and its private key "
                    f"(an encrypted key is refused: there is no passphrase to give): {exc}"
                ) from None
        return self

    @property
    def host(self) -> str:
        host = self.target.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") else host

    @property
    def port(self) -> int:
        return int(self.target.rpartition(":")[2])

    @property
    def tls_server_name(self) -> str:
        """The name the receiver's certificate is checked against (and sent as SNI)."""
        return self.server_name or self.host


class LoggingConfig(_Section):
    """`[logging]`: how much, in which form, and where besides standard error
    (bot/logsetup.py). `run -v` means level "debug" whatever is set here."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    # Appended to (relative paths: from the config's folder), as well as standard error.
    file: str | None = None

    @field_validator("file")
    @classmethod
    def _file(cls, value: str | None, info: ValidationInfo) -> str | None:
        """The folder must exist: a typo would otherwise fail only at start, or make a
        folder nobody looks in."""
        if value is None:
            return None
        if not value.strip():
            raise ValueError("empty: give the log file's path, or leave the key out")
        path = _config_path(value, info)
        if not path.parent.is_dir():
            raise ValueError(f"the log file's folder {str(path.parent)!r} does not exist")
        if path.is_dir():
            raise ValueError(f"{str(path)!r} is a folder: give a file's path")
        return value.strip()


def _config_path(value: str, info: ValidationInfo) -> Path:
    """A path from the config, relative to the config file's folder."""
    base = (info.context or {}).get("base_dir") or Path.cwd()
    return Path(base) / value.strip()


def _no_passphrase() -> bytes:
    """Answers OpenSSL's passphrase question for an encrypted key (which would otherwise
    prompt on the terminal) with a wrong answer: such a key is refused."""
    raise ValueError("the key is encrypted")


class Config(_Section):
    homeserver: HomeserverConfig
    storage: StorageConfig = Field(default_factory=StorageConfig)
    bot: BotConfig = Field(default_factory=BotConfig)
    metrics: MetricsConfig | None = None
    rooms: list[RoomConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)
    digests: list[DigestConfig] = Field(default_factory=list)
    ingest: IngestConfig | None = None
    ha: HaConfig = Field(default_factory=HaConfig)
    siem: SiemConfig | None = None
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def caveats(self) -> tuple[str, ...]:
        return known_caveats(self.bot.caveats)

    def route_targets(self) -> dict[str, list[str]]:
        """Source room key -> target keys, merged over every [[routes]] table."""
        merged: dict[str, list[str]] = {}
        for route in self.routes:
            targets = merged.setdefault(route.source, [])
            targets.extend(t for t in route.to if t not in targets)
        return merged

    def release_policy(self, source_key: str, target_key: str) -> ReleasePolicy | None:
        """The release approval items from `source_key` to `target_key` wait for; None:
        none (no config route between them asks for it; routes added from chat never do).

        A pair named by two `[[routes]]` tables gets the strictest of their settings: any
        approval over none, the lowest `approval_from` (none, every item, is lowest), the
        shortest timeout, and only the approvers both name (`_approval_errors` refuses a
        config where none are left)."""
        policy: ReleasePolicy | None = None
        for route in self.routes:
            if route.source != source_key or target_key not in route.to:
                continue
            if route.approval == "none":
                continue
            this = self._route_policy(route)
            if policy is None:
                policy = this
                continue
            ranks = (policy.from_rank, this.from_rank)
            policy = ReleasePolicy(
                None if None in ranks else min(r for r in ranks if r is not None),
                policy.approvers & this.approvers,
                min(policy.timeout, this.timeout),
            )
        return policy

    def _route_policy(self, route: RouteConfig) -> ReleasePolicy:
        approvers = route.approvers if route.approvers is not None else self.bot.officers
        from_rank = None
        if route.approval_from is not None:
            room = self.room(route.source)
            if room is None:  # parse_config refuses such a config; model_validate alone not
                raise ValueError(f"route from {route.source!r}: no such room")
            level = approval_level(route.approval_from, room.parsed_label.scheme)
            if isinstance(level, str):
                raise ValueError(f"route from {route.source!r}: approval_from: {level}")
            from_rank = level.rank
        return ReleasePolicy(from_rank, frozenset(approvers), route.approval_timeout)

    def room(self, key: str) -> RoomConfig | None:
        return next((r for r in self.rooms if r.key == key), None)

    @property
    def home_server(self) -> str:
        """The bot's own homeserver, the default (and a required) server of every room."""
        return server_of(self.homeserver.user_id)

    @model_validator(mode="after")
    def _rooms_keep_the_bot(self) -> Config:
        for i, room in enumerate(self.rooms):
            if room.servers is not None and self.home_server not in room.servers:
                raise ValueError(
                    f"rooms[{i}].servers: must include the bot's own homeserver "
                    f"{self.home_server!r} (the room's server ACL would shut the bot out)"
                )
        return self

    @model_validator(mode="after")
    def _ha_needs_shared_state(self) -> Config:
        if not self.ha.enabled:
            return self
        if make_url(self.storage.database_url).get_backend_name() != "postgresql":
            raise ValueError(
                "ha.enabled: high availability needs a PostgreSQL storage.database_url "
                "(every node shares it)"
            )
        if self.storage.crypto_store != "database":
            raise ValueError(
                'ha.enabled: set storage.crypto_store = "database" (every node must load the '
                "same device's keys)"
            )
        return self

    def database_url(self) -> str:
        """The database URL with a relative SQLite path taken from the config's folder."""
        return resolve_database_url(self.storage.database_url, self._base_dir)

    def path(self, value: str) -> Path:
        """A path from the config, absolute (relative ones are from the config's folder)."""
        return (self._base_dir / value.strip()).resolve()

    def schemes_path(self) -> Path | None:
        """The site schemes file, absolute (relative paths are from the config's folder)."""
        if self.bot.schemes_file is None or not self.bot.schemes_file.strip():
            return None
        return (self._base_dir / self.bot.schemes_file.strip()).resolve()

    @property
    def crypto_store_in_database(self) -> bool:
        """`storage.crypto_store = "database"`: nio's crypto store lives in the database."""
        return self.storage.crypto_store == CRYPTO_STORE_DATABASE

    def crypto_store_path(self) -> Path:
        """The crypto store's folder (relative paths are from the config's folder)."""
        if self.crypto_store_in_database:
            raise ValueError("the crypto store is in the database: it has no folder")
        return self._base_dir / self.storage.crypto_store

    def log_file(self) -> Path | None:
        """`[logging] file`, absolute (relative paths are from the config's folder). The
        last part is not resolved: a symlink there is refused when the log is opened
        (bot/logsetup.py), not followed."""
        if not self.logging.file:
            return None
        return Path(os.path.normpath(self._base_dir / self.logging.file.strip()))

    def secret_sources(self) -> dict[str, SecretSource]:
        """Secret name -> where it comes from, for every secret the bot needs to run: the
        `_file` twin where one is set, else the environment variable. Names are
        "pickle_key", "data_key", "password", "access_token" and "feed:<key>"."""
        base = self._base_dir

        def source(prefix: str, env_key: str, env: str | None, file: str | None) -> SecretSource:
            if file is not None:
                path = Path(file)
                full = path if path.is_absolute() else base / path
                return SecretSource(f"{prefix}{env_key[:-4]}_file", "file", str(full))
            assert env is not None  # the section's validator made sure of one
            return SecretSource(f"{prefix}{env_key}", "env", env)

        hs, storage = self.homeserver, self.storage
        out = {
            "pickle_key": source(
                "homeserver.", "pickle_key_env", hs.pickle_key_env, hs.pickle_key_file
            ),
            "data_key": source(
                "storage.", "data_key_env", storage.data_key_env, storage.data_key_file
            ),
        }
        if hs.password_env or hs.password_file:
            out["password"] = source(
                "homeserver.", "password_env", hs.password_env, hs.password_file
            )
        if hs.access_token_env or hs.access_token_file:
            out["access_token"] = source(
                "homeserver.", "access_token_env", hs.access_token_env, hs.access_token_file
            )
        for i, feed in enumerate(self.ingest.feeds if self.ingest else ()):
            out[f"feed:{feed.key}"] = source(
                f"ingest.feeds[{i}].", "token_env", feed.token_env, feed.token_file
            )
        return out

    def secret_variables(self) -> dict[str, str]:
        """Key path -> environment variable for every secret given by one."""
        return {s.key: s.name for s in self.secret_sources().values() if s.kind == "env"}

    def missing_secrets(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """The secrets whose environment variable is unset or empty (files are checked when
        they are read: bot/startup.py)."""
        env = os.environ if environ is None else environ
        return [
            f"{path}: environment variable {name} is not set"
            for path, name in self.secret_variables().items()
            if not env.get(name)
        ]

    @model_validator(mode="after")
    def _one_source_per_secret(self, info: ValidationInfo) -> Config:
        """One variable or file for two secrets is refused: two keys that are one key (the
        pickle key and the data key, say) lose the separation the two were made for."""
        base = (info.context or {}).get("base_dir")
        if base is not None:  # relative secret files are from the config's folder
            self._base_dir = Path(base).resolve()
        seen: dict[tuple[str, str], str] = {}
        clashes: list[str] = []
        for source in self.secret_sources().values():
            where = (source.kind, os.path.normpath(source.name))
            if where in seen:
                what = "environment variable" if source.kind == "env" else "file"
                clashes.append(
                    f"{seen[where]}, {source.key}: the same {what} {source.name} for two "
                    "secrets; give each its own"
                )
            else:
                seen[where] = source.key
        if clashes:
            raise ValueError("; ".join(clashes))
        return self


def resolve_database_url(url: str, base_dir: Path) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if not path.is_absolute():
            return parsed.set(database=str((base_dir / path).resolve())).render_as_string(
                hide_password=False
            )
    return url


class ConfigError(Exception):
    """A config that cannot be used; `errors` lists every problem as `key.path: message`."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        super().__init__(f"{source}: {len(errors)} error(s)")
        self.source = source
        self.errors = list(errors)


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"{path}: cannot read: {exc}"]) from None
    config = parse_config(text, str(path), path.resolve().parent)
    config._base_dir = path.resolve().parent
    return config


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate a config. A `[bot] schemes_file` is read and installed first (the rooms'
    labels may use its schemes); its errors are listed under `bot.schemes_file`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"{source}: not valid TOML: {exc}"]) from None
    except (RecursionError, MemoryError):  # nested arrays or tables thousands deep
        raise ConfigError(source, [f"{source}: nested too deeply to read"]) from None
    bot_section = raw.get("bot")
    caveats = bot_section.get("caveats", []) if isinstance(bot_section, dict) else []
    if not isinstance(caveats, list) or not all(isinstance(c, str) for c in caveats):
        caveats = []
    errors: list[str] = []
    schemes_file = bot_section.get("schemes_file") if isinstance(bot_section, dict) else None
    if isinstance(schemes_file, str) and schemes_file.strip():
        try:
            use_schemes_file((base_dir or Path.cwd()) / schemes_file.strip(), announce=False)
        except SchemesFileError as exc:
            errors.append(f"bot.schemes_file: {exc}")
    config: Config | None = None
    try:
        config = Config.model_validate(
            raw, context={"caveats": caveats, "base_dir": base_dir or Path.cwd()}
        )
    except ValidationError as exc:
        errors.extend(_format_error(err) for err in exc.errors())
    errors.extend(_reference_errors(raw))
    errors.extend(_approval_errors(raw, caveats))
    if errors or config is None:
        raise ConfigError(source, list(dict.fromkeys(errors)))
    return config


def _loc(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = _key(part)
            out += f".{part}" if out else part
    return out or "(top level)"


def _key(part: str) -> str:
    """A key as TOML writes it: bare, else quoted, so that an odd key (empty, with a dot, a
    colon or a line break) cannot blur the path or forge another error line."""
    if _BARE_KEY.match(part):
        return part
    return json.dumps(part, ensure_ascii=not part.isprintable())


def _format_error(err: Mapping[str, Any]) -> str:
    loc = tuple(err["loc"])
    path = _loc(loc)
    if err["type"] == "extra_forbidden" and loc:
        key = str(loc[-1])
        if key in SECRET_KEYS:
            return (
                f"{path}: secrets are not read from the config file; set "
                f"{SECRET_KEYS[key]} to the name of an environment variable holding it, or "
                f"{SECRET_KEYS[key][:-4]}_file to a file holding it"
            )
        return f"{path}: unknown key {key!r}{_suggest_key(loc)}"
    if err["type"] == "missing":
        return f"{path}: required key is missing"
    message = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return f"{path}: {message}"


def _suggest_key(loc: tuple[int | str, ...]) -> str:
    model: type[BaseModel] | None = Config
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _model_of(field.annotation) if field else None
    if model is None:
        return ""
    names = [f.alias or n for n, f in model.model_fields.items()]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return f" — did you mean {close[0]!r}?" if close else ""


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (`X`, `X | None`, `list[X]`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class _Ref:
    path: str
    key: object


def _reference_errors(raw: Mapping[str, Any]) -> list[str]:
    """Routes, digests and feeds must name existing rooms; room keys must be unique."""
    rooms = raw.get("rooms")
    keys: list[str] = []
    errors: list[str] = []
    if isinstance(rooms, list):
        for i, room in enumerate(rooms):
            key = room.get("key") if isinstance(room, dict) else None
            if isinstance(key, str):
                if key in keys:
                    errors.append(f"rooms[{i}].key: duplicate room key {key!r}")
                keys.append(key)
    refs: list[_Ref] = []
    for i, route in enumerate(_tables(raw.get("routes"))):
        refs.append(_Ref(f"routes[{i}].from", route.get("from")))
        targets = route.get("to")
        for j, target in enumerate(targets if isinstance(targets, list) else []):
            refs.append(_Ref(f"routes[{i}].to[{j}]", target))
            if target == route.get("from"):
                errors.append(f"routes[{i}].to[{j}]: a room cannot route to itself ({target!r})")
    for i, digest in enumerate(_tables(raw.get("digests"))):
        refs.append(_Ref(f"digests[{i}].room", digest.get("room")))
        sources = digest.get("sources")
        for j, source in enumerate(sources if isinstance(sources, list) else []):
            refs.append(_Ref(f"digests[{i}].sources[{j}]", source))
    bot = raw.get("bot")
    if isinstance(bot, dict) and "admin_room" in bot:
        # A managed room, so its label decides who gets its key and only admins stay in it.
        refs.append(_Ref("bot.admin_room", bot.get("admin_room")))
    ingest = raw.get("ingest")
    feeds = ingest.get("feeds") if isinstance(ingest, dict) else None
    feed_keys: set[object] = set()
    for i, feed in enumerate(_tables(feeds)):
        refs.append(_Ref(f"ingest.feeds[{i}].room", feed.get("room")))
        key = feed.get("key")
        if not isinstance(key, str):  # a list is unhashable; pydantic reports the type
            continue
        if key in feed_keys:
            errors.append(f"ingest.feeds[{i}].key: duplicate feed key {key!r}")
        feed_keys.add(key)
    for ref in refs:
        if isinstance(ref.key, str) and ref.key not in keys:
            close = difflib.get_close_matches(ref.key, keys, n=1)
            hint = f" — did you mean {close[0]!r}?" if close else ""
            known = ", ".join(dict.fromkeys(keys)) or "none"
            errors.append(f"{ref.path}: no room with key {ref.key!r} (rooms: {known}){hint}")
    return errors


def approval_level(value: str, scheme: str, room_key: str | None = None) -> Level | str:
    """The level of `scheme` that a route's `approval_from` names (`GEHEIM` or `DEU
    GEHEIM` for DEU, accents and case as levels are typed), or why none does."""
    found = [lv for lv in level_candidates(value, scheme) if lv.scheme == scheme]
    if found:
        return found[0]
    known = current_catalogue().scheme(scheme)
    names = [lv.name for lv in known.levels if not lv.legacy] if known else []
    close = difflib.get_close_matches(value.strip().upper(), names, n=1, cutoff=0.6)
    hint = f": did you mean {close[0]}?" if close else f" (levels: {', '.join(names) or 'none'})"
    where = f" (room {room_key})" if room_key else ""
    return f"{json.dumps(value, ensure_ascii=False)} is not a level of {scheme}{where}{hint}"


def _approval_errors(raw: Mapping[str, Any], caveats: Sequence[str]) -> list[str]:
    """Release approval against the rooms: `approval_from` must be a level of the source
    room's scheme, someone must be able to approve, and a pair in two routes must keep an
    approver both name. Other errors of these keys are pydantic's (each once)."""
    rooms = {
        t["key"]: t.get("label") for t in _tables(raw.get("rooms")) if isinstance(t.get("key"), str)
    }
    bot = raw.get("bot")
    officers = bot.get("officers") if isinstance(bot, dict) else None
    has_officers = isinstance(officers, list) and bool(officers)
    errors: list[str] = []
    pairs: dict[tuple[str, str], tuple[int, frozenset[str] | None]] = {}
    for i, route in enumerate(_tables(raw.get("routes"))):
        if route.get("approval") != "second-officer":
            continue
        source = route.get("from")
        level = route.get("approval_from")
        label = rooms.get(source) if isinstance(source, str) else None
        if isinstance(level, str) and level.strip() and isinstance(label, str):
            try:
                scheme = parse_marking(label, extra_caveats=caveats).scheme
            except MarkingError:
                scheme = None  # the room's label error is reported with the room
            if scheme is not None:
                found = approval_level(level, scheme, source)
                if isinstance(found, str):
                    errors.append(f"routes[{i}].approval_from: {found}")
        approvers = route.get("approvers")
        if "approvers" not in route and not has_officers:
            errors.append(
                f"routes[{i}].approvers: nobody could release this route's items: name the "
                "approvers here, or the officers in [bot] officers"
            )
        named: frozenset[str] | None = None
        if isinstance(approvers, list) and all(isinstance(a, str) for a in approvers):
            named = frozenset(approvers)
        elif "approvers" not in route and isinstance(officers, list):
            named = frozenset(o for o in officers if isinstance(o, str))
        targets = route.get("to")
        for target in targets if isinstance(targets, list) else []:
            if not isinstance(source, str) or not isinstance(target, str):
                continue
            earlier = pairs.get((source, target))
            if earlier is not None and named is not None and earlier[1] is not None:
                common = earlier[1] & named
                if not common and earlier[1] and named:
                    errors.append(
                        f"routes[{i}].approvers: {source}->{target} is also in routes"
                        f"[{earlier[0]}] with approval; the stricter of the two applies, so "
                        "only approvers both name may release, and they name none in common"
                    )
                named = common
            pairs[(source, target)] = (i, named)
    return errors


def _tables(value: Any) -> list[dict[str, Any]]:
    return [t for t in value if isinstance(t, dict)] if isinstance(value, list) else []


def reference_keys(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, str]:
    """Every config key path with its default as the docs show it (`required` if none), for
    the README's configuration reference and the test that keeps the two in step."""
    out: dict[str, str] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = f"{prefix}{key}"
        nested = _model_of(field.annotation)
        if nested is not None:
            is_list = "list[" in str(field.annotation)
            out.update(reference_keys(nested, f"{path}[]." if is_list else f"{path}."))
            continue
        if field.is_required():
            out[path] = "required"
        else:
            default = field.get_default(call_default_factory=True)
            if isinstance(default, timedelta):
                from bot.schedule import format_duration

                default = format_duration(default)
            out[path] = "none" if default is None else json.dumps(default, ensure_ascii=False)
    return out
