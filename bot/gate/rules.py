"""What the gate decides, apart from Synapse: who may enter a managed room, who may change it.

Synapse-free so it can be tested without a homeserver; `bot.gate.module` feeds it what the
homeserver knows (the room's label event and its sender) and runs it in a worker thread,
since it reads the register. The membership rule is `policy.may_enter`, the very function
the bot applies before it invites: there is no second implementation to drift.

Fails closed: in a room that is managed (it carries the label event, or a register lists
it), anything that stops the gate from reading the register refuses the join or invite and
says why. In a room that is not managed nothing is refused.

The bot's admins, admin room and extra caveats come from the settings row the bot publishes
into its register (`bot.storage.gate_settings`), read and cached like the other rows; a
config from before then may still carry copies, used only while no row is published. A row
that does not verify (or one that was read and is gone) closes the bot's managed rooms
until the bot publishes again: otherwise a database writer could open its admin room. With
each read of that row the gate also compares the database's schema revision and the bot's
version with its own (`SchemaTooOld`, and warnings for the rest).

Given the register's public key (`RegisterSpec.register_key`), a row that does not verify
counts for nothing, and the refusal names it: a clearance row someone with write access to
the database inserted or raised admits nobody (its person is judged as having no clearance),
and a room row that does not verify closes that room, labelled or not, rather than leave it
unmanaged (which would admit everyone). Without the key, rows are honoured as stored and
the gate says so whenever it opens such a register.
"""

from __future__ import annotations

import concurrent.futures
import functools
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Generic, TypeVar

from cachetools import TTLCache
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import event, inspect

from bot.gate.config import RegisterSpec, package_version, read_password_file
from bot.storage.gate_settings import (
    GateSettings,
    SettingsRefused,
    read_gate_settings,
    read_schema_revision,
    revision_number,
)
from bot.storage.models import (
    SCHEMA_HEAD,
    ClearanceCaveatRow,
    ClearanceRow,
    GateSettingsRow,
    GrantRow,
    RoomRow,
)
from bot.storage.reader import RegisterReader, make_reader_engine
from bot.storage.records import ClearanceRecord, RegisterVerifier, RoomRecord
from bot.storage.register_reads import policy_clearance
from bot.wire import MEGOLM
from policy import (
    MarkingError,
    Room,
    make_room,
    may_enter,
    parse_marking,
    record_mismatch,
    server_of,
)

log = logging.getLogger(__name__)

LABEL_EVENT = "io.github.liaison_bot.label"
# The commands a room offers (MSC4332, unstable prefix; `commands.slash` writes it, spelt
# here too so the gate loads nothing of the commands). A member who set it could offer the
# room's clients commands the bot never declared, with arguments that say other than they do.
COMMANDS_EVENT = "org.matrix.msc4332.commands"

# State only the managing bot may change in its rooms: what the label is, who has power,
# how the room is encrypted, who may join, who may read history, which servers take part,
# and which commands clients offer for the bot.
PROTECTED_STATE = frozenset(
    {
        LABEL_EVENT,
        COMMANDS_EVENT,
        "m.room.power_levels",
        "m.room.encryption",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.guest_access",
        "m.room.server_acl",
        # an upgrade would spin off an unlabelled copy; a third-party invite lets a
        # federated server make a member without asking this one
        "m.room.tombstone",
        "m.room.third_party_invite",
    }
)
# What the managing bot itself must keep them at: even its own account (or a thief holding
# its token, or the admin API's make_room_admin, which sends as the room's most powerful
# local member) cannot open a managed room or hand out the power to invite.
_REQUIRED = {
    "m.room.join_rules": ("join_rule", "invite"),
    "m.room.history_visibility": ("history_visibility", "joined"),
    "m.room.guest_access": ("guest_access", "forbidden"),
}
# What a power-levels content means when it leaves a key out: the spec's defaults, which
# Synapse applies too. Reading a missing `invite` as anything above 0 would let a content
# that hands everyone the power to invite pass as closed.
_POWER_DEFAULTS = {"invite": 0, "kick": 50, "ban": 50, "redact": 50, "state_default": 50}
# The spec's recommended rotation of a Megolm session; the bot never sets more (a longer
# one keeps a room key in use for longer than clients expect).
_ROTATION_LIMITS = {"rotation_period_ms": 604_800_000, "rotation_period_msgs": 100}
# Room versions in which a room's creators hold unlimited power that no power-levels
# content lists or can take away (MSC4289: version 12 and its unstable identifier).
_CREATOR_POWER_VERSIONS = frozenset({"org.matrix.hydra.11"})
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253}[A-Za-z0-9])?$")

# Extra field of a refusal, for clients and tests that want the reason apart from the text.
REASON_FIELD = "io.github.liaison_bot.reason"


@dataclass(frozen=True, slots=True)
class Verdict:
    """An answer and its reason, shown to the refused client and written to Synapse's log."""

    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True, slots=True)
class RoomLabel:
    """What the homeserver's current state says of a room: whether it carries the label
    event, and who sent it (a room's owning bot)."""

    labelled: bool
    sender: str | None = None


UNLABELLED = RoomLabel(False)

K = TypeVar("K")
V = TypeVar("V")
R = TypeVar("R")

_MISSING = object()


class _TtlCache(Generic[K, V]):
    """Reads reused for `ttl` seconds, bounded; locked, as Synapse calls from its threads."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._cache: TTLCache[K, V] | None = (
            TTLCache(maxsize=10_000, ttl=ttl, timer=clock) if ttl > 0 else None
        )
        self._lock = threading.Lock()

    def get(self, key: K) -> tuple[bool, V | None]:
        if self._cache is None:
            return False, None
        with self._lock:
            value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            return False, None
        return True, value  # type: ignore[return-value]  # not _MISSING (above), so a V

    def put(self, key: K, value: V) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache[key] = value

    def drop(self, key: K) -> None:
        if self._cache is not None:
            with self._lock:
                self._cache.pop(key, None)


class RowRefused(LookupError):
    """A register row whose signature does not verify; the message names the row, for
    the refusal the client and Synapse's log show."""


class _NotingVerifier(RegisterVerifier):
    """A verifier that notes, per thread, which row it last refused.

    The reader answers None both for a row that is absent and for one that does not verify
    (and logs the latter); the gate wants to say which, without a second query. Register
    reads run in several of the gate's threads at once, hence a note per thread, taken
    (read and cleared) right after the read that made it."""

    def __init__(self, public: Ed25519PublicKey) -> None:
        super().__init__(public)
        self._notes = threading.local()

    def clearance_verifies(self, record: ClearanceRecord, signature: str | None) -> bool:
        ok = super().clearance_verifies(record, signature)
        if not ok:
            self._notes.row = f"the register row of {record.user_id}"
        return ok

    def room_verifies(self, record: RoomRecord, signature: str | None) -> bool:
        ok = super().room_verifies(record, signature)
        if not ok:
            self._notes.row = f"the register row of room {record.key} ({record.room_id})"
        return ok

    def take(self) -> str | None:
        """The row the last read in this thread refused, if any; cleared."""
        row: str | None = getattr(self._notes, "row", None)
        self._notes.row = None
        return row


def open_reader(
    database: str, register_key: str | None, password_file: str | None = None
) -> RegisterReader:
    """The gate's reader of one register: `RegisterReader.from_url(database, register_key)`,
    with a verifier that also tells the gate which row it refused, and the password of
    `password_file` given to each new connection (read then, so a rotated password needs
    no restart; it is never part of a URL anything logs)."""
    verifier = _NotingVerifier.from_text(register_key) if register_key else None
    engine = make_reader_engine(database)
    if password_file is not None:

        @event.listens_for(engine, "do_connect")
        def _password(_d: Any, _r: Any, _a: Any, cparams: dict[str, Any]) -> None:
            cparams["password"] = read_password_file(password_file)

    return RegisterReader(engine, verifier)


def _refused_row(reader: RegisterReader) -> str | None:
    verifier = reader.verifier
    return verifier.take() if isinstance(verifier, _NotingVerifier) else None


# One read of the register as a whole, from the caller's side. The connection and statement
# limits (3 s each) are the driver's and the server's; they do not cover a server, or a
# route, that stops answering once connected: without this the decision waited for ever
# and held a thread of the gate's pool.
READ_DEADLINE = 4.0
READ_THREADS = 4  # per register; a read past its deadline keeps its thread until it ends


class ReadTimeout(Exception):
    """The register did not answer within READ_DEADLINE: the decision fails closed."""


class SchemaTooOld(Exception):
    """The register's database is at an older schema revision than this gate reads (or at
    one it cannot place): the gate refuses to start; met later, every managed room of the
    register fails closed."""


class SettingsUnverified(LookupError):
    """The bot's published settings row does not verify (or a row this gate read is gone):
    deny by default, every managed room of the register admits nobody until the bot
    publishes again. Neither the row (it may name an attacker as admin) nor the copies in
    homeserver.yaml (the row says the bot's config moved on from them) are used."""


class SchemaIncompatible(Exception):
    """The register's database is newer than this gate and changed a table it reads."""


# What the gate reads, by table: a newer schema that still has all of them is read as
# before (the reads name their columns); one that dropped or renamed any is not.
_READ_TABLES = (ClearanceRow, GrantRow, ClearanceCaveatRow, RoomRow, GateSettingsRow)


@dataclass(frozen=True, slots=True)
class BotSettings:
    """What the gate uses of one bot's config, and where it came from (for the log)."""

    admins: frozenset[str]
    admin_room: str | None
    caveats: tuple[str, ...]
    source: str  # "published", or why the config's copies are used


@dataclass(frozen=True, slots=True)
class _SettingsRead:
    revision: str | None
    settings: GateSettings | None
    refused: str | None  # the row is there but does not verify: why
    missing: list[str]  # columns the gate reads that a newer schema lacks


class NeedsRead(Exception):
    """Raised by a cache-only lookup that would have to read the register: the caller
    (Synapse's reactor thread, which must never wait on a database) asks again in the
    gate's thread pool."""


class Register:
    """One bot's register as the gate reads it: opened lazily, read through a short cache.

    Every lookup can be asked `cache_only`: then it answers from the cache or raises
    NeedsRead, so the common case (a room and a clearance read a moment ago) is decided
    on the reactor without a hop to a thread and back."""

    def __init__(
        self,
        spec: RegisterSpec,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        open_reader: Callable[[str, str | None, str | None], RegisterReader] = open_reader,
        gate_version: str | None = None,
    ) -> None:
        self.spec = spec
        self._open_reader = open_reader
        self._gate_version = gate_version or package_version()
        if spec.register_key is None:
            # Said whenever such a register is opened (Synapse's start, a registers file
            # that names it): the deployment works as before, and must not look protected.
            log.warning(
                "liaison gate: register of %s has no register_key: its rows are NOT "
                "verified, so anyone who can write its database can grant clearances; set "
                "register_key (liaison-bot gate synapse-config prints it)",
                spec.bot_user_id,
            )
        self._reader: RegisterReader | None = None
        self._lock = threading.Lock()
        self._reads = concurrent.futures.ThreadPoolExecutor(
            READ_THREADS, thread_name_prefix=f"liaison-gate-read-{spec.bot_user_id}"
        )
        self._rooms: _TtlCache[str, RoomRecord | None] = _TtlCache(ttl, clock)
        self._clearances: _TtlCache[str, ClearanceRecord] = _TtlCache(ttl, clock)
        self._settings: _TtlCache[str, BotSettings] = _TtlCache(ttl, clock)
        self._said: dict[str, object] = {}  # what was last logged, per topic: said once
        # A verified row was read: its absence from then on is a deletion, not an old bot.
        self._seen_published = False

    @property
    def bot(self) -> str:
        return self.spec.bot_user_id

    def _read(self) -> RegisterReader:
        with self._lock:
            if self._reader is None:
                self._reader = self._open_reader(
                    self.spec.database, self.spec.register_key, self.spec.database_password_file
                )
            return self._reader

    def _bounded(self, read: Callable[[RegisterReader], R]) -> tuple[R, str | None]:
        """`read(reader)` and the row its verifier refused, if any, within READ_DEADLINE:
        in a thread of the register's own (the verifier notes refusals per thread), so
        the caller can stop waiting; ReadTimeout when it does."""
        reader = self._read()

        def run() -> tuple[R, str | None]:
            _refused_row(reader)  # a note left by a read that raised is not this read's
            record = read(reader)
            return record, _refused_row(reader)

        future = self._reads.submit(run)
        try:
            return future.result(timeout=READ_DEADLINE)
        except concurrent.futures.TimeoutError:
            future.cancel()  # still queued behind hung reads: never started
            raise ReadTimeout(f"no answer within {READ_DEADLINE:g} s") from None

    def room(self, room_id: str, *, fresh: bool, cache_only: bool = False) -> RoomRecord | None:
        """The room on record; `fresh` rereads a cached absence (a labelled room must be
        found, and may have been saved a moment ago)."""
        hit, record = self._rooms.get(room_id)
        if hit and (record is not None or not fresh):
            return record
        if cache_only:
            raise NeedsRead(room_id)
        record, refused = self._bounded(lambda reader: reader.room_by_id(room_id))
        if record is None and refused is not None:
            raise RowRefused(f"{refused} does not verify (altered in the database?)")
        self._rooms.put(room_id, record)
        return record

    def clearance(self, user_id: str, *, cache_only: bool = False) -> ClearanceRecord | None:
        """A record on file is reused for the TTL; no record is always asked again, so a
        grant the bot just made counts for the invite it makes next."""
        hit, record = self._clearances.get(user_id)
        if hit and record is not None:
            return record
        if cache_only:
            raise NeedsRead(user_id)
        record, refused = self._bounded(lambda reader: reader.clearance(user_id))
        if record is None and refused is not None:
            raise RowRefused(f"{refused} does not verify (altered in the database?)")
        if record is not None:
            self._clearances.put(user_id, record)
        return record

    def settings(self, *, cache_only: bool = False) -> BotSettings:
        """The bot's admins, admin room and caveats: as it published them, else (nothing
        published: a bot older than this gate) the config's copies, if any; reused for the
        TTL. Each read also checks the schema revision and the bot's version. Raises
        SettingsUnverified, SchemaTooOld or SchemaIncompatible, or the read's error: the
        caller fails closed."""
        return self.settings_read(cache_only=cache_only)[0]

    def settings_read(
        self, *, cache_only: bool = False, fresh: bool = False
    ) -> tuple[BotSettings, bool]:
        """`settings`, and whether they came from the cache (`fresh`: they do not)."""
        if not fresh:
            hit, cached = self._settings.get("")
            if hit and cached is not None:
                return cached, True
        if cache_only:
            raise NeedsRead("settings")
        read, _refused = self._bounded(self._read_settings)
        self._check_schema(read)
        settings = self._settings_from(read)
        self._settings.put("", settings)
        return settings, False

    def check_at_start(self) -> None:
        """The checks of `settings`, at Synapse's start: a database the gate cannot read
        (SchemaTooOld, SchemaIncompatible) stops the start, naming both sides. An
        unreachable one does not (the gate fails closed until it answers, and checks then)."""
        try:
            self.settings()
        except (SchemaTooOld, SchemaIncompatible):
            raise
        except SettingsUnverified:
            return  # logged, naming the row; the bot's next start publishes it again
        except Exception as exc:
            log.warning(
                "liaison gate: register of %s cannot be read at start (%s): its schema and "
                "settings are checked at the first read that succeeds; until then its managed "
                "rooms admit nobody",
                self.bot,
                _failure(exc),
            )

    def _read_settings(self, reader: RegisterReader) -> _SettingsRead:
        with reader.engine.connect() as conn:
            revision = read_schema_revision(conn)
            number = revision_number(revision) if revision is not None else None
            missing: list[str] = []
            if number is not None and number > int(SCHEMA_HEAD):
                have = inspect(conn)
                for model in _READ_TABLES:
                    name = str(model.__tablename__)
                    try:
                        columns = {c["name"] for c in have.get_columns(name)}
                    except Exception:  # the table is gone (NoSuchTableError)
                        columns = set()
                    missing += [
                        f"{name}.{c.name}" for c in model.__table__.c if c.name not in columns
                    ]
            if missing or number is None or number < int(SCHEMA_HEAD):
                return _SettingsRead(revision, None, None, missing)
            try:
                settings = read_gate_settings(conn, self.bot, reader.verifier)
            except SettingsRefused as exc:
                return _SettingsRead(revision, None, str(exc), missing)
        return _SettingsRead(revision, settings, None, missing)

    def _say(self, topic: str, value: object, level: int, message: str, *args: object) -> None:
        """Log once per new `value` of `topic` (reads repeat every TTL; the log must not)."""
        if self._said.get(topic, _MISSING) != value:
            self._said[topic] = value
            log.log(level, message, *args)

    def _check_schema(self, read: _SettingsRead) -> None:
        revision, needed = read.revision, SCHEMA_HEAD
        number = revision_number(revision) if revision is not None else None
        upgrade = "run `liaison-bot db upgrade` with the bot's config first"
        if number is None or number < int(needed):
            raise SchemaTooOld(
                f"the register of {self.bot} ({self.spec.database}) is at schema "
                f"revision {revision or 'none'}, but this gate (liaison-bot "
                f"{self._gate_version}) needs revision {needed}: {upgrade}"
            )
        if read.missing:
            raise SchemaIncompatible(
                f"the register of {self.bot} is at schema revision {revision}, newer than this "
                f"gate (liaison-bot {self._gate_version}, revision {needed}) knows, and lacks "
                f"what the gate reads ({', '.join(read.missing)}): install the bot's version "
                "of liaison-bot[gate] into Synapse's environment and restart Synapse"
            )
        if number > int(needed):
            self._say(
                "schema",
                revision,
                logging.WARNING,
                "liaison gate: register of %s is at schema revision %s, newer than this gate "
                "(liaison-bot %s) knows (%s); the tables it reads are unchanged, so it reads "
                "on, but upgrade the gate to the bot's version",
                self.bot,
                revision,
                self._gate_version,
                needed,
            )

    def _settings_from(self, read: _SettingsRead) -> BotSettings:
        spec = self.spec
        published = read.settings
        if published is not None:
            if published.bot_version != self._gate_version:
                self._say(
                    "version",
                    published.bot_version,
                    logging.WARNING,
                    "liaison gate: bot %s runs liaison-bot %s but this gate is %s: upgrade "
                    "them together (the gate in Synapse's environment, the bot in its own)",
                    self.bot,
                    published.bot_version,
                    self._gate_version,
                )
            if spec.has_copies:
                self._say(
                    "copies",
                    True,
                    logging.INFO,
                    "liaison gate: %s publishes its settings into the register: the admins, "
                    "admin_room and caveats in homeserver.yaml are ignored (remove them)",
                    self.bot,
                )
            self._say(
                "source",
                "published",
                logging.INFO,
                "liaison gate: %s: its published settings are read (%d admin(s), admin room %s)",
                self.bot,
                len(published.admins),
                published.admin_room or "none",
            )
            self._seen_published = True
            return BotSettings(
                frozenset(published.admins),
                published.admin_room,
                published.caveats,
                "published",
            )
        refused = read.refused
        if refused is None and self._seen_published:
            refused = (
                f"the gate settings row of {self.bot} was there and is gone (deleted in the "
                "database?)"
            )
        if refused is not None:
            self._say(
                "source",
                refused,
                logging.ERROR,
                "liaison gate: %s: ignored, and the rooms of %s admit nobody until the bot "
                "publishes its settings again (restart it)",
                refused,
                self.bot,
            )
            raise SettingsUnverified(refused)
        why = "no settings published"
        self._say(
            "source",
            why,
            logging.WARNING,
            "liaison gate: %s has published no settings yet (a bot older than this gate, "
            "or not started since the upgrade): %s",
            self.bot,
            "using the copies in homeserver.yaml"
            if spec.has_copies
            else "no admins, no admin room, no extra caveats until it does",
        )
        return BotSettings(frozenset(spec.admins), spec.admin_room, tuple(spec.caveats), why)

    def forget(self, user_id: str) -> None:
        """Drop a cached record (a refusal must not rest on an old one)."""
        self._clearances.drop(user_id)

    def close(self) -> None:
        self._reads.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


@functools.lru_cache(maxsize=1024)
def _policy_room(
    key: str,
    label: str,
    scheme: str,
    rank: int,
    audience: tuple[str, ...],
    servers: tuple[str, ...] | None,
    caveats: tuple[str, ...],
) -> Room | str:
    """The room a record describes, as the rules see it: parsed once per record, not once
    per invite (parsing a marking costs more than the rest of a cached decision). Or, when
    the schemes in force read the label on record otherwise than its stored scheme and rank
    (a site schemes file redefined the scheme), why: such a room admits nobody (logged once
    per record, as it is parsed)."""
    room = make_room(parse_marking(label, extra_caveats=caveats), audience, servers)
    changed = record_mismatch(room.label, label, scheme, rank)
    if changed is not None:
        log.warning("liaison gate: managed room %s admits nobody: its label is %s", key, changed)
        return f"its label is {changed}"
    return room


def _unverified_room(exc: RowRefused, room_id: str) -> Verdict:
    return Verdict(False, f"{exc}: {room_id} admits nobody until it does")


def _failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


class Gate:
    """The decisions; `registers` gives the current registers by bot (it may change when a
    registers file does)."""

    def __init__(
        self,
        registers: Callable[[], dict[str, Register]],
        today: Callable[[], date] = lambda: datetime.now(UTC).date(),
        server_name: str | None = None,
    ) -> None:
        self._registers = registers
        self._today = today
        self._server_name = server_name  # this homeserver's; None: every bot is local

    def _remote(self, label: RoomLabel) -> str | None:
        """The server of a label set by a bot on another homeserver (whose own gate judges
        its room: this one cannot read that register), else None."""
        if not label.labelled or self._server_name is None or label.sender is None:
            return None
        server = server_of(label.sender)
        return server if server and server != self._server_name else None

    def _listed(self, room_id: str, cache_only: bool = False) -> tuple[str | None, Verdict | None]:
        """The bot whose register lists the room, or a refusal when a register that might
        list it cannot be read: a room another homeserver's bot labelled may still be
        ours, and reading "not listed" into a failed read would hand its judgement to a
        gate that cannot read our register (fails closed)."""
        unreadable: list[str] = []
        for bot, register in self._registers().items():
            try:
                if register.room(room_id, fresh=False, cache_only=cache_only) is not None:
                    return bot, None
            except NeedsRead:
                raise
            except RowRefused as exc:
                return None, _unverified_room(exc, room_id)
            except Exception as exc:
                log.warning("register of %s unreadable (%s)", bot, _failure(exc))
                unreadable.append(f"{bot} ({_failure(exc)})")
        if unreadable:
            return None, Verdict(
                False,
                f"the clearance register of {', '.join(unreadable)} cannot be read, so this "
                f"gate cannot tell whether it manages {room_id}; refused until it can",
            )
        return None, None

    def _candidates(
        self, room_id: str, label: RoomLabel, cache_only: bool = False
    ) -> tuple[list[Register], Verdict | None]:
        registers = self._registers()
        if not label.labelled:
            return list(registers.values()), None
        owner = registers.get(label.sender or "")
        if owner is None:
            listed, unknown = self._listed(room_id, cache_only)
            if unknown is not None:
                return [], unknown
            if listed is not None:  # ours, whoever set the label: judged here
                return [registers[listed]], None
            remote = self._remote(label)
            if remote is not None:
                return [], Verdict(
                    True, f"{room_id} is managed by {label.sender}: {remote}'s gate judges it"
                )
            return [], Verdict(
                False,
                f"{room_id} carries a liaison label set by {label.sender}, "
                "which is not a bot this homeserver's gate knows",
            )
        return [owner], None

    def _managing(
        self, room_id: str, label: RoomLabel, cache_only: bool = False
    ) -> tuple[Register | None, RoomRecord | None, Verdict | None]:
        """Which register manages the room and its record; or the verdict that settles it
        already: a refusal when that cannot be told for a managed room, an allow for a room
        another homeserver's gate judges. (None, None, None): not a managed room."""
        candidates, refusal = self._candidates(room_id, label, cache_only)
        if refusal is not None:
            return None, None, refusal
        for register in candidates:
            try:
                record = register.room(room_id, fresh=label.labelled, cache_only=cache_only)
            except NeedsRead:
                raise
            except RowRefused as exc:
                # Labelled or not: were a row that does not verify read as "not listed",
                # the room would count as unmanaged and admit everyone.
                return register, None, _unverified_room(exc, room_id)
            except Exception as exc:
                if label.labelled:
                    return (
                        register,
                        None,
                        Verdict(
                            False,
                            f"the clearance register of {register.bot} cannot be read "
                            f"({_failure(exc)}); managed room {room_id} admits nobody until it can",
                        ),
                    )
                log.warning(
                    "register of %s unreadable (%s): %s has no label, treated as unmanaged",
                    register.bot,
                    _failure(exc),
                    room_id,
                )
                continue
            if record is not None:
                return register, record, None
            if label.labelled:
                return (
                    register,
                    None,
                    Verdict(
                        False,
                        f"{room_id} carries {register.bot}'s label but its register does not "
                        "list the room",
                    ),
                )
        return None, None, None

    def may_enter(self, user_id: str, room_id: str, label: RoomLabel) -> Verdict:
        """May `user_id` be invited into, or join, the room."""
        return self._may_enter(user_id, room_id, label, cache_only=False)

    def may_enter_cached(self, user_id: str, room_id: str, label: RoomLabel) -> Verdict | None:
        """The same verdict when the cache alone can give it (no register read, so it may
        run on Synapse's reactor), else None: ask `may_enter` in a thread."""
        try:
            return self._may_enter(user_id, room_id, label, cache_only=True)
        except NeedsRead:
            return None

    def _may_enter(self, user_id: str, room_id: str, label: RoomLabel, cache_only: bool) -> Verdict:
        registers = self._registers()
        if user_id in registers:
            return Verdict(True, f"{user_id} is a liaison bot")
        register, record, settled = self._managing(room_id, label, cache_only)
        if settled is not None:  # a refusal, or another homeserver's room to judge
            return settled
        if register is None or record is None:
            return Verdict(True, f"{room_id} is not a managed room")
        where = f"{record.key} ({record.label})"
        if record.closed_at is not None:
            return Verdict(False, f"{where} was closed on {record.closed_at:%Y-%m-%d}")
        try:
            settings, cached = register.settings_read(cache_only=cache_only)
            verdict = self._decide(register, record, user_id, settings, cache_only)
            if not verdict and cached:
                # A refusal is never given from cached settings: an admin the bot's config
                # just added, or a caveat, counts at once (as a grant does).
                if cache_only:
                    raise NeedsRead("settings")
                settings, _ = register.settings_read(fresh=True)
                verdict = self._decide(register, record, user_id, settings, cache_only)
        except NeedsRead:
            raise
        except Exception as exc:  # the settings row, the schema: fails closed
            return Verdict(
                False,
                f"the clearance register of {register.bot} cannot be read ({_failure(exc)}); "
                f"{where} admits nobody until it can",
            )
        return verdict

    def _decide(
        self,
        register: Register,
        record: RoomRecord,
        user_id: str,
        settings: BotSettings,
        cache_only: bool,
    ) -> Verdict:
        where = f"{record.key} ({record.label})"
        try:
            room = _policy_room(
                record.key,
                record.label,
                record.scheme,
                record.rank,
                record.audience,
                record.servers,
                settings.caveats,
            )
        except MarkingError as exc:
            return Verdict(False, f"the label on record for {where} cannot be read: {exc}")
        if isinstance(room, str):
            return Verdict(False, f"{where} admits nobody: {room}")
        try:
            clearance = register.clearance(user_id, cache_only=cache_only)
        except NeedsRead:
            raise
        except RowRefused as exc:  # counts as no clearance at all, and says why
            return Verdict(False, f"{user_id} may not enter {where}: {exc}")
        except Exception as exc:
            return Verdict(
                False,
                f"the clearance register of {register.bot} cannot be read ({_failure(exc)}); "
                f"{where} admits nobody until it can",
            )
        decision = may_enter(
            user_id,
            policy_clearance(clearance) if clearance is not None else None,
            room,
            self._today(),
            admins=settings.admins if record.key == settings.admin_room else None,
        )
        if not decision.allowed and clearance is not None:
            register.forget(user_id)
        verb = "may enter" if decision.allowed else "may not enter"
        return Verdict(decision.allowed, f"{user_id} {verb} {where}: {decision.reason}")

    def may_set_state(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        label: RoomLabel,
        content: Mapping[str, Any] | None = None,
        *,
        federated: bool = False,
    ) -> Verdict:
        """May `sender` send this state event: protected state of a managed room only by
        the bot that manages it, and even then only with content that keeps the room
        closed (`content_keeps_room_closed`); the label event only by a bot, anywhere, with
        the content the bot writes (`label_problem`).

        `federated`: the event comes from another server. A label a bot there sets in a
        room no bot here manages is that server's gate's to judge (this one knows neither
        the bot nor its caveats); in a room a bot here manages, only that bot sets it."""
        if federated and event_type == LABEL_EVENT and sender not in self._registers():
            return self._foreign_label(sender, room_id, label)
        verdict, managing = self._may_set_state(sender, room_id, event_type, label)
        if not verdict.allowed or content is None:
            return verdict
        problem: str | None = None
        if event_type == LABEL_EVENT:
            problem = self._label_problem(sender, room_id, content, label)
        elif managing:
            problem = content_keeps_room_closed(event_type, content, sender)
        if problem is not None:
            where = "managed room" if managing else "room"
            return Verdict(False, f"{event_type} in {where} {room_id}: {problem}")
        return verdict

    def _foreign_label(self, sender: str, room_id: str, label: RoomLabel) -> Verdict:
        registers = self._registers()
        owner = label.sender if label.labelled and label.sender in registers else None
        if owner is None:
            listed, unknown = self._listed(room_id)
            if unknown is not None:
                return unknown
            owner = listed
        if owner is not None:
            return Verdict(False, f"{room_id} is managed by {owner}, not {sender}")
        return Verdict(True, f"{room_id} is not managed here: {sender}'s own gate judges it")

    def _label_problem(
        self, bot: str, room_id: str, content: Mapping[str, Any], label: RoomLabel
    ) -> str | None:
        """What is wrong with a label a bot sets: its shape (`label_problem`), or a rank
        below the one on record (the bot refuses to lower a room's label; so does this).
        A room's first label lowers nothing: it is set even when the register is down."""
        register = self._registers().get(bot)
        caveats: list[str] = []
        if register is not None:
            try:
                caveats = list(register.settings().caveats)
            except Exception as exc:  # unknown caveats then read as unknown: refused
                log.warning("liaison gate: settings of %s unreadable (%s)", bot, _failure(exc))
                caveats = list(register.spec.caveats)
        problem = label_problem(content, caveats)
        if problem is not None or register is None:
            return problem
        try:
            record = register.room(room_id, fresh=False)
        except RowRefused as exc:
            return f"{exc}, so the label on record cannot be compared" if label.labelled else None
        except Exception as exc:
            if not label.labelled:
                return None
            return (
                f"the clearance register of {bot} cannot be read ({_failure(exc)}), so the "
                "label on record cannot be compared"
            )
        if record is not None and int(content["rank"]) < record.rank:
            return (
                f"rank {content['rank']} ({content['banner']}) is below the label on record "
                f"for {record.key} ({record.label}, rank {record.rank}): a label is never lowered"
            )
        return None

    def _may_set_state(
        self, sender: str, room_id: str, event_type: str, label: RoomLabel
    ) -> tuple[Verdict, bool]:
        """The verdict, and whether it is the managing bot's own change (whose content is
        checked next)."""
        if event_type not in PROTECTED_STATE:
            return Verdict(True, f"{event_type} is not protected"), False
        registers = self._registers()
        if event_type == LABEL_EVENT:
            if sender not in registers:
                return Verdict(
                    False, f"only a liaison bot may set {LABEL_EVENT}; {sender} is not one"
                ), False
            if label.labelled and label.sender != sender:
                return Verdict(
                    False, f"{room_id} is managed by {label.sender}, not {sender}"
                ), False
            return Verdict(True, f"{sender} is a liaison bot"), False
        if label.labelled and label.sender not in registers:
            listed, unknown = self._listed(room_id)
            if unknown is not None:
                return unknown, False
            if listed is not None:
                owner: str | None = listed
            elif self._remote(label):
                return Verdict(
                    True, f"{room_id} is managed on {self._remote(label)}: its gate judges"
                ), False
            else:
                owner = label.sender
        elif label.labelled:
            owner = label.sender
        else:
            register, _record, _refusal = self._managing(room_id, label)
            owner = register.bot if register is not None else None
        if owner is None:
            return Verdict(True, f"{room_id} is not a managed room"), False
        if sender == owner:
            return Verdict(True, f"{sender} manages {room_id}"), True
        return Verdict(
            False, f"only {owner} may change {event_type} in managed room {room_id}"
        ), False


class _Bad(ValueError):
    """A content field of the wrong shape; the message names it."""


def _level(value: Any, where: str) -> int:
    """A power level as Synapse reads it: an integer, or (room versions before 10) a
    string of one; anything else (a boolean, a float, a list) is refused."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Bad(f"{where} is not an integer: {value!r}")
    try:
        return int(value)
    except ValueError:
        raise _Bad(f"{where} is not an integer: {value!r}") from None


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _Bad(f"{where} is not an object: {value!r}")
    return value


def content_keeps_room_closed(
    event_type: str, content: Mapping[str, Any], owner: str
) -> str | None:
    """None when a managed room stays as closed as the bot keeps it, else what is wrong:
    join rules invite-only, history from joining, no guests, Megolm encryption for good,
    no replacement room, a server ACL of named servers only, and nobody but `owner` (or a
    room creator, whom room version 12 gives unlimited power and does not list) able to
    invite, remove, ban, redact or change any protected state."""
    required = _REQUIRED.get(event_type)
    if required is not None:
        key, value = required
        if content.get(key) != value:
            return f"{key} must stay {value!r}, not {content.get(key)!r}"
        return None
    try:
        if event_type == "m.room.power_levels":
            return _power_problem(content, owner)
        if event_type == "m.room.server_acl":
            return _acl_problem(content)
        if event_type == "m.room.encryption":
            return _encryption_problem(content)
    except _Bad as exc:
        return str(exc)
    if event_type == "m.room.tombstone":
        # The bot never replaces a managed room: a tombstone would send its members on to
        # a room nobody labelled or registered, whatever replacement it names.
        return "a managed room is never replaced; make a new room with the bot instead"
    if event_type == "m.room.third_party_invite":
        # The bot never invites by e-mail: a third-party invite would let whoever holds the
        # identity server's key named in it (a thief's own) sign a join token.
        return "a managed room takes no third-party invites; invite by Matrix id"
    return None


def _power_problem(content: Mapping[str, Any], owner: str) -> str | None:
    levels = {k: _level(content.get(k, d), k) for k, d in _POWER_DEFAULTS.items()}
    users_default = _level(content.get("users_default", 0), "users_default")
    users = {
        str(u): _level(v, f"users[{u}]")
        for u, v in _mapping(content.get("users", {}), "users").items()
    }
    events = {
        str(t): _level(v, f"events[{t}]")
        for t, v in _mapping(content.get("events", {}), "events").items()
    }
    threshold = min(levels.values())
    if users_default >= threshold:
        at = ", ".join(
            f"{k} {v}" + ("" if k in content else " (absent: the spec's default)")
            for k, v in levels.items()
            if v == threshold
        )
        return f"users_default {users_default} reaches the power to act on others ({at})"
    others = {u: level for u, level in users.items() if u != owner}
    strong = sorted(u for u, level in others.items() if level >= threshold)
    if strong:
        return f"{', '.join(strong)} would hold power only the bot may hold (>= {threshold})"
    # Each protected type needs its own level (or state_default) above every non-owner's:
    # an `events` entry is how the power over join rules or the ACL would be handed out.
    top = max([users_default, *others.values()])
    holder = "users_default" if users_default == top else max(others, key=lambda u: others[u])
    reachable = sorted(
        f"{t} ({events.get(t, levels['state_default'])})"
        for t in PROTECTED_STATE
        if events.get(t, levels["state_default"]) <= top
    )
    if reachable:
        return (
            f"{holder} ({top}) would reach the level to change {', '.join(reachable)}: "
            "only the bot may change protected state"
        )
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return True


def _server_name(entry: Any) -> str:
    """The host of an ACL entry that names one server (host, optionally with a port; an
    IPv6 literal in brackets): no glob, so it admits that server and nothing wider."""
    if not isinstance(entry, str):
        raise _Bad(f"ACL entry {entry!r} is not a string")
    if "*" in entry or "?" in entry:
        raise _Bad(f"ACL entry {entry!r} is a pattern: only named servers are allowed")
    if entry.startswith("["):
        end = entry.find("]")
        host, rest = entry[: end + 1], entry[end + 1 :]
        port_ok = end > 0 and (not rest or (rest[:1] == ":" and rest[1:].isdigit()))
    else:
        host, sep, port = entry.partition(":")
        port_ok = not sep or port.isdigit()
    if not port_ok or not (_is_ip(host) or _HOSTNAME.match(host)):
        raise _Bad(f"ACL entry {entry!r} is not a server name")
    return host


def _acl_problem(content: Mapping[str, Any]) -> str | None:
    allow = content.get("allow")
    if not isinstance(allow, list) or not allow:
        return (
            "allow must list the room's servers by name "
            f"(an empty or missing allow shuts out every server), not {allow!r}"
        )
    hosts = [_server_name(entry) for entry in allow]
    deny = content.get("deny", [])
    if not isinstance(deny, list) or not all(isinstance(d, str) for d in deny):
        return f"deny must be a list of strings, not {deny!r}"
    literals = content.get("allow_ip_literals", True)  # the spec's default
    if literals is not False and not any(_is_ip(h) for h in hosts):
        shown = (
            "absent (the spec's default: true)"
            if "allow_ip_literals" not in content
            else repr(literals)
        )
        return (
            f"allow_ip_literals must be false when no allowed server is an IP literal, not {shown}"
        )
    return None


def _encryption_problem(content: Mapping[str, Any]) -> str | None:
    algorithm = content.get("algorithm")
    if algorithm != MEGOLM:
        return f"algorithm must stay {MEGOLM!r}, not {algorithm!r}: encryption is never removed"
    for key, limit in _ROTATION_LIMITS.items():
        if key in content:
            value = content[key]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
                return f"{key} must be a whole number from 1 to {limit}, not {value!r}"
    return None


def label_problem(content: Mapping[str, Any], caveats: list[str]) -> str | None:
    """None when a label event's content has the shape the bot writes and says one thing
    (`bot.services.rooms.label_content`): a banner that parses, and the short fields
    (scheme, level, rank, caveats) that agree with it, with an audience of nation codes."""
    banner = content.get("banner")
    if not isinstance(banner, str):
        return f"banner must be the room's marking as text, not {banner!r}"
    try:
        label = parse_marking(banner, extra_caveats=caveats)
    except MarkingError as exc:
        return f"banner {banner!r} does not parse: {exc}"
    expected = {
        "scheme": label.scheme,
        "level": label.level.banner,
        "rank": label.rank,
        "caveats": sorted(label.caveats),
    }
    for key, value in expected.items():
        have = content.get(key)
        if isinstance(have, bool) or have != value:
            return f"{key} {have!r} does not agree with banner {banner!r} ({value!r})"
    audience = content.get("audience")
    if (
        not isinstance(audience, list)
        or not audience
        or not all(isinstance(a, str) and a for a in audience)
    ):
        return f"audience must be a non-empty list of nation codes, not {audience!r}"
    return None


def creator_power_version(room_version: str) -> bool:
    """Whether rooms of this version give their creators unlimited power, which no
    power-levels content can take away (version 12 on, and its unstable identifier)."""
    if room_version in _CREATOR_POWER_VERSIONS:
        return True
    return room_version.isdigit() and int(room_version) >= 12


__all__ = [
    "COMMANDS_EVENT",
    "LABEL_EVENT",
    "MEGOLM",
    "PROTECTED_STATE",
    "REASON_FIELD",
    "UNLABELLED",
    "BotSettings",
    "Gate",
    "NeedsRead",
    "Register",
    "RoomLabel",
    "RowRefused",
    "SchemaIncompatible",
    "SchemaTooOld",
    "SettingsUnverified",
    "Verdict",
    "content_keeps_room_closed",
    "creator_power_version",
    "label_problem",
    "open_reader",
]
