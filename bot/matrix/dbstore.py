"""nio's crypto store in PostgreSQL, for `[storage] crypto_store = "database"` (issue 26).

Two bot processes of a high-availability pair run on different hosts with one database and
one Matrix device: when the active dies, the standby carries on as the same device, so it
needs the Olm account, the Olm sessions, the Megolm inbound sessions, the device keys with
their trust, the outgoing key requests and the encrypted rooms exactly as the active left
them. nio keeps them in a SQLite file on one host; `DatabaseStore` keeps them in the bot's
PostgreSQL database instead, through peewee (nio's own database layer) over psycopg 3.

What it keeps from nio's `SqliteStore`: the layout of the rows (nio's tables, layout version
2) and the trust state in the database, keyed by the device row (nio ignores a device whose
Ed25519 key changes, so that is the same as keying by the key). What it changes:

- the tables are made by Alembic (revision 0014) in a schema of their own, never by nio at
  run time; a start checks the layout version and stops with what to run when it is missing;
- SQLite's `INSERT OR REPLACE` becomes PostgreSQL's `INSERT … ON CONFLICT (…) DO UPDATE`
  (a replace also deleted the old row and renumbered it);
- trust checks are answered from memory: the devices' row ids and trust states are read
  once (with the device keys at load) and every trust write updates them after it is
  written; nio checks trust several times per device on every send, at three queries each;
- inbound group sessions load with their forwarding chains in one query, the device keys
  with their keys and trust in one (nio: one query per session and per device);
- an Olm session keeps its last use time across a reload (nio's SqliteStore drops it, so
  the newest session, not the last used, was picked after a restart);
- a device's new display name is saved (nio only saved it for a device it did not have).

A rollback (of a whole transaction or a savepoint, e.g. CryptoClient's one transaction per
to-device event) forgets what is held in memory, so nothing cached outlives the rows it
described; it is read again on next use. The memory is this process's only: a store reads
it when it is built, so a standby builds its client (and so its store) once it has taken
over, not before.

Connections: `connect_params()` is called at every connect and reconnect and its keywords
are added to psycopg's (its `options` after the URL's own, so the URL's search_path stays):
the high-availability code passes its epoch there, so that the fence trigger (revision
0013, on these tables too) refuses the writes of a process that no longer holds the lease.
A connection the server ended is replaced at the next statement outside a transaction;
the statement that met the dead connection fails, nothing is retried.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from nio.crypto import (
    DeviceStore,
    GroupSessionStore,
    InboundGroupSession,
    OlmAccount,
    OlmDevice,
    OutgoingKeyRequest,
    Session,
    SessionStore,
    TrustState,
)
from nio.store import MatrixStore
from peewee import (
    JOIN,
    BlobField,
    BooleanField,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    ProgrammingError,
    TextField,
    Tuple,
    fn,
)
from playhouse.psycopg3_ext import Psycopg3Database
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

from bot.startup import StartupError

log = logging.getLogger(__name__)

# nio's store layout that the tables of revision 0014 follow (MatrixStore.store_version).
STORE_VERSION = 2
# Rows per INSERT: well under PostgreSQL's 65 535 parameters for every table here.
CHUNK = 500

T = TypeVar("T")


class CryptoStoreMissing(StartupError):
    """The database has no crypto store tables of the layout this bot reads."""


def crypto_schema(bot_schema: str) -> str:
    """The schema of the crypto store's tables for the schema of the bot's own: `nio_crypto`
    beside `public`, else `<schema>_nio_crypto`, so two bots in two schemas of one database
    (the tests' way) keep apart. Revision 0014 makes them by the same rule."""
    return "nio_crypto" if bot_schema == "public" else f"{bot_schema}_nio_crypto"


def no_connect_params() -> Mapping[str, str]:
    """A store outside a high-availability pair adds nothing to the connection."""
    return {}


def connect_kwargs(database_url: str) -> dict[str, str]:
    """psycopg's connection keywords for the bot's SQLAlchemy URL
    (`postgresql+psycopg://user@host:5432/db?options=…`): the same server, database, role
    and query options (search_path among them) as the bot's own tables."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"the database crypto store needs PostgreSQL, not {url.drivername}")
    kwargs: dict[str, str] = {}
    for key, value in (
        ("host", url.host),
        ("port", url.port),
        ("user", url.username),
        ("password", url.password),
        ("dbname", url.database),
    ):
        if value not in (None, ""):
            kwargs[key] = str(value)
    for key, given in url.query.items():
        kwargs[key] = given if isinstance(given, str) else " ".join(given)
    return kwargs


def merge_params(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """`extra` over `base`, but `options` (server settings, `-c name=value …`) joined: the
    URL's search_path and the caller's settings both apply."""
    merged = dict(base)
    for key, value in extra.items():
        if key == "options" and merged.get("options"):
            merged["options"] = f"{merged['options']} {value}"
        else:
            merged[key] = value
    return merged


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _WatchedSavepoint:
    """peewee's savepoint, telling the database when it is rolled back."""

    def __init__(self, inner: Any, on_rollback: Callable[[], None]) -> None:
        self._inner = inner
        self._on_rollback = on_rollback

    def __enter__(self) -> Any:
        return self._inner.__enter__()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        if exc_type is not None:
            self._on_rollback()
            return self._inner.__exit__(exc_type, exc, tb)
        try:
            return self._inner.__exit__(exc_type, exc, tb)
        except BaseException:  # the release failed, and peewee rolled back to the savepoint
            self._on_rollback()
            raise


class CryptoDatabase(Psycopg3Database):  # type: ignore[misc]  # peewee ships no types
    """peewee's psycopg 3 database, connecting with the URL's keywords plus those of
    `connect_params()` at every (re)connect, and telling its store of every rollback."""

    def __init__(
        self, base: Mapping[str, str], connect_params: Callable[[], Mapping[str, str]]
    ) -> None:
        self._base = dict(base)
        self._connect_params = connect_params
        self.on_rollback: Callable[[], None] = lambda: None
        # peewee wants a name; without one in the URL, libpq picks its default as it does
        # for the bot's own tables (the keywords below are what connects).
        super().__init__(self._base.get("dbname") or "(libpq default)")

    def _connect(self) -> Any:
        conn = psycopg.connect(make_conninfo(**merge_params(self._base, self._connect_params())))
        conn.autocommit = True  # peewee issues BEGIN itself (atomic)
        return conn

    def cursor(self, commit: Any = None, named_cursor: Any = None) -> Any:
        if not self.is_closed() and not self.in_transaction() and self.connection().closed:
            # The server ended the connection (restart, failover, a terminated backend): the
            # statement that met it has failed; this one gets a new connection.
            log.warning("crypto store: the database connection was lost; reconnecting")
            self.close()
        return super().cursor(commit, named_cursor)

    def rollback(self) -> None:
        self.on_rollback()
        super().rollback()

    def savepoint(self) -> Any:
        return _WatchedSavepoint(super().savepoint(), lambda: self.on_rollback())


class _TrustField(IntegerField):  # type: ignore[misc]  # peewee ships no types
    """nio's TrustState as its integer; NULL (no trust row, in an outer join) is unset."""

    def db_value(self, value: Any) -> Any:
        return value.value if isinstance(value, TrustState) else value

    def python_value(self, value: Any) -> TrustState:
        return TrustState.unset if value is None else TrustState(value)


class Tables:
    """nio's tables in the crypto store's schema, as peewee models bound to one store's
    database (made per store: nio's own model classes stay bound to its SQLite stores, the
    test clients' among them). Columns as revision 0014 makes them."""

    def __init__(self, db: CryptoDatabase, schema_name: str) -> None:
        class Base(Model):  # type: ignore[misc]  # peewee ships no types
            class Meta:
                database = db
                schema = schema_name

        class StoreVersion(Base):
            version = IntegerField()

            class Meta:
                table_name = "storeversion"

        class Accounts(Base):
            user_id = TextField()
            device_id = TextField()
            account = BlobField()
            shared = BooleanField()

            class Meta:
                table_name = "accounts"

        class OlmSessions(Base):
            session_id = TextField(primary_key=True)
            account = ForeignKeyField(Accounts, column_name="account_id", on_delete="CASCADE")
            sender_key = TextField()
            session = BlobField()
            creation_time = DateTimeField()
            last_usage_date = DateTimeField()

            class Meta:
                table_name = "olmsessions"

        class MegolmInboundSessions(Base):
            session_id = TextField(primary_key=True)
            account = ForeignKeyField(Accounts, column_name="account_id", on_delete="CASCADE")
            sender_key = TextField()
            fp_key = TextField()
            room_id = TextField()
            session = BlobField()

            class Meta:
                table_name = "megolminboundsessions"

        class ForwardedChains(Base):
            session = ForeignKeyField(
                MegolmInboundSessions, column_name="session_id", on_delete="CASCADE"
            )
            sender_key = TextField()

            class Meta:
                table_name = "forwardedchains"

        class DeviceKeys(Base):
            account = ForeignKeyField(Accounts, column_name="account_id", on_delete="CASCADE")
            user_id = TextField()
            device_id = TextField()
            display_name = TextField(default="")
            deleted = BooleanField()

            class Meta:
                table_name = "devicekeys"

        class Keys(Base):
            device = ForeignKeyField(DeviceKeys, column_name="device_id", on_delete="CASCADE")
            key_type = TextField()
            key = TextField()

            class Meta:
                table_name = "keys"

        class DeviceTrustState(Base):
            device = ForeignKeyField(
                DeviceKeys, column_name="device_id", primary_key=True, on_delete="CASCADE"
            )
            state = _TrustField()

            class Meta:
                table_name = "devicetruststate"

        class EncryptedRooms(Base):
            account = ForeignKeyField(Accounts, column_name="account_id", on_delete="CASCADE")
            room_id = TextField()

            class Meta:
                table_name = "encryptedrooms"

        class OutgoingKeyRequests(Base):
            account = ForeignKeyField(Accounts, column_name="account_id", on_delete="CASCADE")
            request_id = TextField()
            session_id = TextField()
            room_id = TextField()
            algorithm = TextField()

            class Meta:
                table_name = "outgoingkeyrequests"

        class SyncTokens(Base):
            account = ForeignKeyField(Accounts, column_name="account_id", on_delete="CASCADE")
            token = TextField()

            class Meta:
                table_name = "synctokens"

        self.StoreVersion = StoreVersion
        self.Accounts = Accounts
        self.OlmSessions = OlmSessions
        self.MegolmInboundSessions = MegolmInboundSessions
        self.ForwardedChains = ForwardedChains
        self.DeviceKeys = DeviceKeys
        self.Keys = Keys
        self.DeviceTrustState = DeviceTrustState
        self.EncryptedRooms = EncryptedRooms
        self.OutgoingKeyRequests = OutgoingKeyRequests
        self.SyncTokens = SyncTokens

    def all(self) -> list[Any]:
        return [
            self.StoreVersion,
            self.Accounts,
            self.OlmSessions,
            self.MegolmInboundSessions,
            self.ForwardedChains,
            self.DeviceKeys,
            self.Keys,
            self.DeviceTrustState,
            self.EncryptedRooms,
            self.OutgoingKeyRequests,
            self.SyncTokens,
        ]


# (user id, device id) -> (device row id, trust state)
Devices = dict[tuple[str, str], tuple[int, TrustState]]


class DatabaseStore(MatrixStore):  # type: ignore[misc]  # nio ships no types
    """nio's MatrixStore on the bot's PostgreSQL database (see the module's docstring).

    Built by nio's client as it builds any store (user id, device id, store path, pickle
    key, store name: the path and name mean nothing here), with the database URL and the
    connection parameters bound beforehand (`bot/matrix/session.py`)."""

    def __init__(
        self,
        user_id: str,
        device_id: str,
        store_path: str = "",
        pickle_key: str = "",
        database_name: str = "",
        *,
        database_url: str,
        connect_params: Callable[[], Mapping[str, str]] = no_connect_params,
    ) -> None:
        self.database_url = database_url
        self.connect_params = connect_params
        self._account_id: int | None = None
        self._devices: Devices | None = None
        # nio's dataclass __init__: sets the fields, then calls __post_init__ (below).
        super().__init__(user_id, device_id, store_path, pickle_key, database_name)

    def __repr__(self) -> str:
        # nio's dataclass repr would show the pickle key.
        return f"DatabaseStore({self.user_id!r}, {self.device_id!r}, {self.database_path!r})"

    def __post_init__(self) -> None:
        """Connect and check the tables; nio's would create or upgrade them, which only a
        migration does here (revision 0014)."""
        self.database_path = make_url(self.database_url).render_as_string(hide_password=True)
        self.database = CryptoDatabase(connect_kwargs(self.database_url), self.connect_params)
        self.database.on_rollback = self._forget
        try:
            self.database.connect()
            bot_schema = self.database.execute_sql("SELECT current_schema()").fetchone()[0]
            if not bot_schema:
                raise CryptoStoreMissing(
                    f"{self.database_path}: no current schema (the search_path names none)"
                )
            self.schema = crypto_schema(bot_schema)
            self.tables = Tables(self.database, self.schema)
            self._check_version()
        except BaseException:
            self.database.close()
            raise

    def _check_version(self) -> None:
        version = self.tables.StoreVersion
        try:
            found = [v for (v,) in version.select(version.version).tuples()]
        except ProgrammingError:  # no such schema or table
            raise CryptoStoreMissing(
                f"{self.database_path}: the crypto store's tables (schema {self.schema}) are "
                "missing: run `liaison-bot db upgrade` (revision 0014 makes them)"
            ) from None
        if found != [STORE_VERSION]:
            raise CryptoStoreMissing(
                f"{self.database_path}: schema {self.schema} holds crypto store layout "
                f"{found or 'none'}; this bot reads layout {STORE_VERSION}"
            )

    def _forget(self) -> None:
        """A rollback: what memory holds may describe rows that are gone."""
        self._account_id = None
        self._devices = None

    # -- the account ------------------------------------------------------------------------

    def _mine(self) -> Any:
        """The condition selecting this store's account row (joined in)."""
        accounts = self.tables.Accounts
        return (accounts.user_id == self.user_id) & (accounts.device_id == self.device_id)

    def _account(self) -> int | None:
        if self._account_id is None:
            accounts = self.tables.Accounts
            self._account_id = accounts.select(accounts.id).where(self._mine()).scalar()
        return self._account_id

    def _own_account(self) -> int:
        account = self._account()
        if account is None:
            raise LookupError(f"no Olm account of {self.user_id} {self.device_id} is stored")
        return account

    def load_account(self) -> OlmAccount | None:
        accounts = self.tables.Accounts
        row = (
            accounts.select(accounts.id, accounts.account, accounts.shared)
            .where(self._mine())
            .tuples()
            .first()
        )
        if row is None:
            return None
        self._account_id, pickle, shared = row
        account = OlmAccount.from_pickle(bytes(pickle), self.pickle_key, shared)
        if account.upgrade_pickle:  # a libolm pickle: written again in vodozemac's format
            account.upgrade_pickle = False
            self.save_account(account)
        return account

    def save_account(self, account: OlmAccount) -> None:
        accounts = self.tables.Accounts
        self._account_id = (
            accounts.insert(
                user_id=self.user_id,
                device_id=self.device_id,
                account=account.pickle(self.pickle_key),
                shared=account.shared,
            )
            .on_conflict(
                conflict_target=[accounts.user_id, accounts.device_id],
                preserve=[accounts.account, accounts.shared],
            )
            .execute()
        )

    # -- Olm sessions -----------------------------------------------------------------------

    def load_sessions(self) -> SessionStore:
        olm, accounts = self.tables.OlmSessions, self.tables.Accounts
        rows = list(
            olm.select(olm.sender_key, olm.session, olm.creation_time, olm.last_usage_date)
            .join(accounts)
            .where(self._mine())
            .tuples()
        )
        store = SessionStore()
        for sender_key, pickle, created, used in rows:
            session = Session.from_pickle(bytes(pickle), created, self.pickle_key, used)
            store.add(sender_key, session)
            if session.upgrade_pickle:
                session.upgrade_pickle = False
                self.save_session(sender_key, session)
        return store

    def save_session(self, curve_key: str, session: Session) -> None:
        olm = self.tables.OlmSessions
        olm.insert(
            session_id=session.id,
            account=self._own_account(),
            sender_key=curve_key,
            session=session.pickle(self.pickle_key),
            creation_time=session.creation_time,
            last_usage_date=session.use_time,
        ).on_conflict(
            conflict_target=[olm.session_id],
            preserve=[
                olm.account,
                olm.sender_key,
                olm.session,
                olm.creation_time,
                olm.last_usage_date,
            ],
        ).as_rowcount().execute()

    # -- Megolm inbound sessions -----------------------------------------------------------

    def load_inbound_group_sessions(self) -> GroupSessionStore:
        """Every room key with its forwarding chain, in one query (chains aggregated in the
        order they were stored)."""
        megolm, chains = self.tables.MegolmInboundSessions, self.tables.ForwardedChains
        accounts = self.tables.Accounts
        chain = fn.array_agg(chains.sender_key).order_by(chains.id).filter(chains.id.is_null(False))
        rows = list(
            megolm.select(
                megolm.session_id,
                megolm.sender_key,
                megolm.fp_key,
                megolm.room_id,
                megolm.session,
                chain,
            )
            .join(accounts, on=(megolm.account == accounts.id))
            .switch(megolm)
            .join(chains, JOIN.LEFT_OUTER, on=(chains.session == megolm.session_id))
            .where(self._mine())
            .group_by(megolm.session_id)
            .tuples()
        )
        store = GroupSessionStore()
        for _, sender_key, fp_key, room_id, pickle, forwarded in rows:
            session = InboundGroupSession.from_pickle(
                bytes(pickle), fp_key, sender_key, room_id, self.pickle_key, list(forwarded or [])
            )
            store.add(session)
            if session.upgrade_pickle:
                session.upgrade_pickle = False
                self.save_inbound_group_session(session)
        return store

    def save_inbound_group_session(self, session: InboundGroupSession) -> None:
        """The session (a known one: its pickle, which may now know earlier messages) and
        its forwarding chain, together."""
        megolm, chains = self.tables.MegolmInboundSessions, self.tables.ForwardedChains
        account = self._own_account()
        with self.database.atomic():
            megolm.insert(
                session_id=session.id,
                account=account,
                sender_key=session.sender_key,
                fp_key=session.ed25519,
                room_id=session.room_id,
                session=session.pickle(self.pickle_key),
            ).on_conflict(
                conflict_target=[megolm.session_id], preserve=[megolm.session]
            ).as_rowcount().execute()
            links = [{"session": session.id, "sender_key": key} for key in session.forwarding_chain]
            if links:
                # The link is the whole row: a link already stored stays as it is.
                chains.insert_many(links).on_conflict(
                    conflict_target=[chains.session, chains.sender_key], action="IGNORE"
                ).as_rowcount().execute()

    # -- device keys and their trust --------------------------------------------------------

    def load_device_keys(self) -> DeviceStore:
        """Every known device with its keys and trust state, in one query; the trust states
        are kept in memory from here on."""
        devices, keys, trust = (
            self.tables.DeviceKeys,
            self.tables.Keys,
            self.tables.DeviceTrustState,
        )
        accounts = self.tables.Accounts
        key_map = (
            fn.json_object_agg(keys.key_type, keys.key).filter(keys.id.is_null(False)).coerce(False)
        )
        rows = list(
            devices.select(
                devices.id,
                devices.user_id,
                devices.device_id,
                devices.display_name,
                devices.deleted,
                trust.state,
                key_map,
            )
            .join(accounts, on=(devices.account == accounts.id))
            .switch(devices)
            .join(trust, JOIN.LEFT_OUTER, on=(trust.device == devices.id))
            .switch(devices)
            .join(keys, JOIN.LEFT_OUTER, on=(keys.device == devices.id))
            .where(self._mine())
            .group_by(devices.id, trust.device)
            .tuples()
        )
        store = DeviceStore()
        known: Devices = {}
        for row_id, user_id, device_id, display_name, deleted, state, device_keys in rows:
            known[(user_id, device_id)] = (row_id, state)
            store.add(
                OlmDevice(
                    user_id,
                    device_id,
                    dict(device_keys or {}),
                    display_name=display_name,
                    deleted=deleted,
                    trust_state=state,
                )
            )
        self._devices = known
        return store

    def save_device_keys(self, device_keys: Mapping[str, Mapping[str, OlmDevice]]) -> None:
        devices, keys = self.tables.DeviceKeys, self.tables.Keys
        account = self._own_account()
        rows = [
            {
                "account": account,
                "user_id": user_id,
                "device_id": device_id,
                "display_name": device.display_name,
                "deleted": device.deleted,
            }
            for user_id, user_devices in device_keys.items()
            for device_id, device in user_devices.items()
        ]
        if not rows:
            return
        ids: dict[tuple[str, str], int] = {}
        with self.database.atomic():
            for chunk in _chunks(rows):
                saved = (
                    devices.insert_many(chunk)
                    .on_conflict(
                        conflict_target=[devices.account, devices.user_id, devices.device_id],
                        preserve=[devices.display_name, devices.deleted],
                    )
                    .returning(devices.id, devices.user_id, devices.device_id)
                    .tuples()
                    .execute()
                )
                ids.update({(user_id, device_id): row_id for row_id, user_id, device_id in saved})
            key_rows = [
                {"device": ids[(user_id, device_id)], "key_type": key_type, "key": key}
                for user_id, user_devices in device_keys.items()
                for device_id, device in user_devices.items()
                for key_type, key in device.keys.items()
            ]
            for chunk in _chunks(key_rows):
                keys.insert_many(chunk).on_conflict(
                    conflict_target=[keys.device, keys.key_type], preserve=[keys.key]
                ).as_rowcount().execute()
        if self._devices is not None:
            for pair, row_id in ids.items():
                known = self._devices.get(pair)
                self._devices[pair] = (row_id, known[1] if known else TrustState.unset)

    def _known_devices(self) -> Devices:
        """The devices' row ids and trust states, read once."""
        if self._devices is None:
            devices, trust = self.tables.DeviceKeys, self.tables.DeviceTrustState
            accounts = self.tables.Accounts
            rows = (
                devices.select(devices.id, devices.user_id, devices.device_id, trust.state)
                .join(accounts, on=(devices.account == accounts.id))
                .switch(devices)
                .join(trust, JOIN.LEFT_OUTER, on=(trust.device == devices.id))
                .where(self._mine())
                .tuples()
            )
            self._devices = {(user, device): (row, state) for row, user, device, state in rows}
        return self._devices

    def _look_up(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Read devices that memory lacks (stored by another process since it was read)."""
        wanted = sorted(set(pairs))
        if not wanted:
            return
        known = self._known_devices()
        devices, trust = self.tables.DeviceKeys, self.tables.DeviceTrustState
        for chunk in _chunks(wanted):
            rows = (
                devices.select(devices.id, devices.user_id, devices.device_id, trust.state)
                .join(trust, JOIN.LEFT_OUTER, on=(trust.device == devices.id))
                .where(
                    (devices.account == self._own_account())
                    & Tuple(devices.user_id, devices.device_id).in_(list(chunk))
                )
                .tuples()
            )
            known.update({(user, device): (row, state) for row, user, device, state in rows})

    def _trust(self, device: OlmDevice) -> TrustState:
        entry = self._known_devices().get((device.user_id, device.id))
        return TrustState.unset if entry is None else entry[1]

    def _set_trust(self, devices: Sequence[OlmDevice], state: TrustState) -> None:
        """Write the trust state of these devices, then remember it."""
        known = self._known_devices()
        self._look_up((d.user_id, d.id) for d in devices if (d.user_id, d.id) not in known)
        missing = [f"{d.user_id} {d.id}" for d in devices if (d.user_id, d.id) not in known]
        if missing:
            raise LookupError(f"devices not in the crypto store: {', '.join(missing[:5])}")
        trust = self.tables.DeviceTrustState
        # One row per device, though the list may name one twice (ON CONFLICT DO UPDATE
        # refuses to touch a row twice in one statement).
        row_ids = sorted({known[(d.user_id, d.id)][0] for d in devices})
        rows = [{"device": row_id, "state": state} for row_id in row_ids]
        with self.database.atomic() if len(rows) > CHUNK else contextlib.nullcontext():
            for chunk in _chunks(rows):
                trust.insert_many(chunk).on_conflict(
                    conflict_target=[trust.device], preserve=[trust.state]
                ).as_rowcount().execute()
        for device in devices:
            pair = (device.user_id, device.id)
            known[pair] = (known[pair][0], state)
            device.trust_state = state

    def _change(self, device: OlmDevice, state: TrustState, unless: bool) -> bool:
        if unless:
            return False
        self._set_trust([device], state)
        return True

    def verify_device(self, device: OlmDevice) -> bool:
        verified = self._trust(device) == TrustState.verified
        return self._change(device, TrustState.verified, unless=verified)

    def unverify_device(self, device: OlmDevice) -> bool:
        verified = self._trust(device) == TrustState.verified
        return self._change(device, TrustState.unset, unless=not verified)

    def is_device_verified(self, device: OlmDevice) -> bool:
        return bool(self._trust(device) == TrustState.verified)

    def blacklist_device(self, device: OlmDevice) -> bool:
        blacklisted = self._trust(device) == TrustState.blacklisted
        return self._change(device, TrustState.blacklisted, unless=blacklisted)

    def unblacklist_device(self, device: OlmDevice) -> bool:
        blacklisted = self._trust(device) == TrustState.blacklisted
        return self._change(device, TrustState.unset, unless=not blacklisted)

    def is_device_blacklisted(self, device: OlmDevice) -> bool:
        return bool(self._trust(device) == TrustState.blacklisted)

    def ignore_device(self, device: OlmDevice) -> bool:
        ignored = self._trust(device) == TrustState.ignored
        return self._change(device, TrustState.ignored, unless=ignored)

    def unignore_device(self, device: OlmDevice) -> bool:
        ignored = self._trust(device) == TrustState.ignored
        return self._change(device, TrustState.unset, unless=not ignored)

    def is_device_ignored(self, device: OlmDevice) -> bool:
        return bool(self._trust(device) == TrustState.ignored)

    def ignore_devices(self, devices: list[OlmDevice]) -> None:
        if devices:
            self._set_trust(devices, TrustState.ignored)

    # -- rooms, key requests, sync token ----------------------------------------------------

    def load_encrypted_rooms(self) -> set[str]:
        rooms, accounts = self.tables.EncryptedRooms, self.tables.Accounts
        query = rooms.select(rooms.room_id).join(accounts).where(self._mine()).tuples()
        return {room_id for (room_id,) in query}

    def save_encrypted_rooms(self, rooms: Iterable[str]) -> None:
        table = self.tables.EncryptedRooms
        account = self._own_account()
        rows = [{"room_id": room_id, "account": account} for room_id in sorted(set(rooms))]
        with self.database.atomic() if len(rows) > CHUNK else contextlib.nullcontext():
            for chunk in _chunks(rows):
                table.insert_many(chunk).on_conflict_ignore().as_rowcount().execute()

    def delete_encrypted_room(self, room: str) -> None:
        account = self._account()
        if account is not None:
            table = self.tables.EncryptedRooms
            table.delete().where((table.room_id == room) & (table.account == account)).execute()

    def load_outgoing_key_requests(self) -> dict[str, OutgoingKeyRequest]:
        requests, accounts = self.tables.OutgoingKeyRequests, self.tables.Accounts
        query = (
            requests.select(
                requests.request_id, requests.session_id, requests.room_id, requests.algorithm
            )
            .join(accounts)
            .where(self._mine())
            .tuples()
        )
        return {row[0]: OutgoingKeyRequest(*row) for row in query}

    def add_outgoing_key_request(self, key_request: OutgoingKeyRequest) -> None:
        self.tables.OutgoingKeyRequests.insert(
            request_id=key_request.request_id,
            session_id=key_request.session_id,
            room_id=key_request.room_id,
            algorithm=key_request.algorithm,
            account=self._own_account(),
        ).on_conflict_ignore().as_rowcount().execute()

    def remove_outgoing_key_request(self, key_request: OutgoingKeyRequest) -> None:
        requests = self.tables.OutgoingKeyRequests
        requests.delete().where(
            (requests.request_id == key_request.request_id)
            & (requests.account == self._own_account())
        ).execute()

    def save_sync_token(self, token: str) -> None:
        tokens = self.tables.SyncTokens
        tokens.insert(account=self._own_account(), token=token).on_conflict(
            conflict_target=[tokens.account], preserve=[tokens.token]
        ).as_rowcount().execute()

    def load_sync_token(self) -> str | None:
        tokens, accounts = self.tables.SyncTokens, self.tables.Accounts
        token: str | None = tokens.select(tokens.token).join(accounts).where(self._mine()).scalar()
        return token
