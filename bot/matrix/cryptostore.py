"""nio's client and crypto store, made safe to crash (issue 24, items 11-14).

nio 0.26 keeps the Olm account, the Olm sessions and the room keys in a SQLite file
(peewee), and by itself:

- creates that file with the umask's mode (0644): the pickles in it are only as private as
  the pickle key, and the rule for the bot's own database is 0600 in a 0700 folder;
- uploads new one-time keys before it saves the account that made them: a crash between
  the two reloads an account that makes *other* keys under the same ids, so every later
  upload fails ("already exists") and a device that claims one of the keys on the server
  cannot open a session with the bot;
- writes the account, the new Olm session and the room key of one pre-key message in three
  transactions: a crash between them leaves the one-time key used up and the room key
  never stored, and the message delivered again after the restart no longer decrypts;
- takes a sync's token before it processes the sync, and skips a sync with a token it has
  seen: after an exception in the middle the retry does nothing, and whatever nio held in
  memory (the account without the key, half a session) is ahead of its store.

`CryptoClient` closes each gap: the store's files are private, the account is saved before
its keys leave, each to-device event is handled in one transaction, and an exception
inside nio's processing of a sync is raised as `ClientStateLost`, after which the caller
drops this client and builds another from the store (`bot/matrix/sync.py`). The same holds
with the crypto store in PostgreSQL (`bot/matrix/dbstore.py`): its `database.atomic()` is a
PostgreSQL transaction, and the account is saved there before the upload just the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from nio import AsyncClient, KeysUploadResponse, SyncResponse
from nio.api import Api
from nio.store import DefaultStore

from bot.ha import SendGate

log = logging.getLogger(__name__)

# SQLite's files beside a database: a rollback journal, or the WAL and its index.
SIDE_FILES = ("-journal", "-wal", "-shm")


class ClientStateLost(Exception):
    """nio failed while processing a sync: what it holds in memory may be ahead of its
    store (and it has taken the sync's token), so this client must not be used again."""


def make_private(path: str) -> None:
    """The file exists and is its owner's only (0600, whatever the umask); so are the
    files SQLite keeps beside it."""
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))
    for name in (path, *(path + end for end in SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(name, 0o600)


class PrivateStore(DefaultStore):  # type: ignore[misc]  # nio ships no types
    """nio's default store with its files private: the database is made 0600 before SQLite
    opens it (SQLite gives its journal the database's mode), and the database and the
    device trust files (nio writes those 0600 itself) are tightened at every load, so a
    store made by an older version is private from its next start on."""

    def _create_database(self) -> Any:
        make_private(self.database_path)
        return super()._create_database()

    def __post_init__(self) -> None:
        super().__post_init__()
        prefix = os.path.join(self.store_path, f"{self.user_id}_{self.device_id}")
        for end in (".trusted_devices", ".blacklisted_devices", ".ignored_devices"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(prefix + end, 0o600)


class CryptoClient(AsyncClient):  # type: ignore[misc]  # nio ships no types
    """nio's AsyncClient with the crash-safety fixes above; the bot builds only these."""

    # False: a failure inside nio's processing of a sync is logged, not raised (nio's own
    # way), for a sync that fails again and again after reloads (`bot/matrix/sync.py`).
    strict = True
    # In front of every request (nio's `send`, which its retries go through too): a node of
    # a high-availability pair that lost its lease sends nothing (bot/ha.py).
    gate: SendGate = SendGate.open_always()

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        self.gate.check()
        return await super().send(*args, **kwargs)

    async def keys_upload(self) -> Any:
        """Upload new one-time keys, with the account that holds them saved first.

        nio saves it only when the homeserver has answered: a crash in between loses keys
        the server hands out. Saved first, a reloaded account still holds them, and
        uploading them again is accepted (the same key under the same id)."""
        olm = self.olm
        if olm is None or not self.logged_in or not self.should_upload_keys:
            return await super().keys_upload()  # nio's own refusal
        keys = olm.share_keys()
        olm.save_account()
        method, path, data = Api.keys_upload(self.access_token, keys)
        response = await self._send(KeysUploadResponse, method, path, data)
        if not isinstance(response, KeysUploadResponse):
            # Devices that cannot claim a key of the bot's cannot open a session with it.
            log.warning("one-time keys not uploaded: %s", response)
        return response

    def _handle_decrypt_to_device(self, to_device_event: Any) -> Any:
        """One to-device event, one transaction: a pre-key message's account, Olm session
        and room key are committed together or not at all (then the event, delivered
        again after a restart, still decrypts with the one-time key it names)."""
        store = self.store
        if store is None:
            return super()._handle_decrypt_to_device(to_device_event)
        with store.database.atomic():
            return super()._handle_decrypt_to_device(to_device_event)

    async def receive_response(self, response: Any) -> None:
        """A sync that nio fails to process leaves this client unusable: nio has taken its
        token (a retry of the same sync is skipped) and may hold state its store does not.
        Raised as ClientStateLost, for the caller to reload from the store."""
        if not isinstance(response, SyncResponse):
            await super().receive_response(response)
            return
        try:
            await super().receive_response(response)
        except Exception as exc:
            if not self.strict:
                log.exception("nio failed processing a sync; taken as it is")
                return
            raise ClientStateLost(f"{type(exc).__name__}: {exc}") from exc

    def close_store(self) -> None:
        """Close the crypto store's database (the client is being replaced)."""
        store = self.store
        if store is not None:
            store.database.close()
