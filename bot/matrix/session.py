"""Logging in: one device for life. The access token is kept sealed in the
store and reused; a password login happens only for a new bot or a token the server
rejected, and then to the same device. The bot never logs out: that would delete the
device and its keys on the server.

The client is nio's with the crash-safety fixes of `bot/matrix/cryptostore.py`; its crypto
store is a private folder (0600 files in a 0700 folder) or, with `crypto_store =
"database"`, the bot's PostgreSQL database (`bot/matrix/dbstore.py`), which both processes
of a high-availability pair share. The gateway gets a factory that builds the same client
again from the store, for when nio fails in the middle of a sync.

Before the first request the homeserver must answer: a homeserver that is down (refused,
no DNS, timed out, 5xx, 429: it restarts, or starts after the bot) is waited for with the
sync loop's backoff, one line per attempt, until it answers or the bot is stopped. An
answer that refuses the bot (a wrong password, a rejected token) is not waited out: it
stops the start with its reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from nio import AsyncClientConfig, LoginResponse, WhoamiResponse

from bot.backoff import Backoff
from bot.config import Config
from bot.ha import SendGate
from bot.matrix.cryptostore import CryptoClient, PrivateStore
from bot.matrix.gateway import Gateway, MatrixError, unwrap
from bot.matrix.trust import KeysAPI, bootstrap_cross_signing, key_sealer
from bot.startup import Secrets, StartupError
from bot.storage import Store, in_thread
from bot.storage.models import NOT_A_NODE
from bot.storage.sealing import Sealer
from commands.views import fingerprint

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0  # one attempt at reaching the homeserver


class StoppedWaiting(Exception):
    """The bot was asked to stop while it waited for the homeserver."""


async def wait_for_homeserver(url: str, stopping: asyncio.Event) -> None:
    """Return once the homeserver answers its versions endpoint (which needs no login);
    until then log each failed attempt and wait the sync loop's backoff. Raises
    StoppedWaiting when `stopping` is set during a wait."""
    backoff = Backoff()
    attempt = 0
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while True:
            attempt += 1
            reason = await _unreachable(http, url)
            if reason is None:
                if attempt > 1:
                    log.info("homeserver %s answers (attempt %d)", url, attempt)
                return
            delay = backoff.next()
            log.warning(
                "homeserver %s unreachable (%s): retrying in %.1f s (attempt %d)",
                url, reason, delay, attempt,
            )  # fmt: skip
            await _pause(stopping, delay)


async def _pause(stopping: asyncio.Event, delay: float) -> None:
    """Wait `delay` seconds; StoppedWaiting at once when `stopping` is set meanwhile."""
    try:
        await asyncio.wait_for(stopping.wait(), delay)
    except TimeoutError:
        return
    raise StoppedWaiting


async def _unreachable(http: aiohttp.ClientSession, url: str) -> str | None:
    """Why the homeserver cannot be reached now, or None when it answers. Any answer but a
    5xx or a 429 counts as one: what it means is for the login to tell."""
    try:
        async with http.get(f"{url}/_matrix/client/versions") as response:
            if response.status == 429 or response.status >= 500:
                return f"HTTP {response.status}"
            return None
    except aiohttp.ClientConnectorDNSError:
        return "DNS"
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "ConnectionRefused"
        if isinstance(exc.os_error, socket.gaierror):
            return "DNS"
        return type(exc.os_error).__name__
    except TimeoutError:
        return "Timeout"
    except (aiohttp.ClientError, OSError) as exc:
        return type(exc).__name__


def crypto_store(
    config: Config, connect_params: Callable[[], Mapping[str, str]] = dict
) -> tuple[Any, str]:
    """The crypto store nio's client builds (a class, or a factory called as nio calls its
    store classes) and the store path to give the client: the database, or the folder,
    made private here."""
    if config.crypto_store_in_database:
        # Imported here: it needs the PostgreSQL driver, which a bot on SQLite does not
        # install (the [bot] extra leaves it to [postgres]).
        from bot.matrix.dbstore import DatabaseStore

        factory = functools.partial(
            DatabaseStore, database_url=config.database_url(), connect_params=connect_params
        )
        # nio loads no store for a client without a store path; this one names no folder.
        return factory, config.storage.crypto_store
    store_dir = config.crypto_store_path()
    store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(store_dir, 0o700)
    return PrivateStore, str(store_dir)


async def login(
    config: Config,
    secrets: Secrets,
    store: Store,
    gate: SendGate | None = None,
    *,
    connect_params: Callable[[], Mapping[str, str]] | None = None,
    stopping: asyncio.Event | None = None,
) -> Gateway:
    """Log in (or reuse the stored login) once the homeserver answers (waiting for it until
    `stopping` is set: StoppedWaiting); `connect_params` is added to every connection of
    a database crypto store (the high-availability pair's epoch and node name; without
    them, those of a process that is not a node), and `gate` shuts every request of a node
    that lost its lease."""
    waiting = stopping or asyncio.Event()
    backoff = Backoff()
    while True:
        await wait_for_homeserver(config.homeserver.url, waiting)
        try:
            return await _login_once(config, secrets, store, gate, connect_params)
        except HomeserverAway as exc:  # it answered the probe, then failed the login
            delay = backoff.next()
            log.warning(
                "homeserver %s failed during the login (%s): retrying in %.1f s",
                config.homeserver.url, exc, delay,
            )  # fmt: skip
            await _pause(waiting, delay)


class HomeserverAway(Exception):
    """The homeserver failed a login request as a server that is down does (no connection,
    a timeout, 5xx, 429): waited out, unlike an answer that refuses the bot."""


def _away_if_down(response: Any) -> None:
    status = getattr(getattr(response, "transport_response", None), "status", None)
    if isinstance(status, int) and (status == 429 or status >= 500):
        raise HomeserverAway(f"HTTP {status}")


async def _login_once(
    config: Config,
    secrets: Secrets,
    store: Store,
    gate: SendGate | None,
    connect_params: Callable[[], Mapping[str, str]] | None,
) -> Gateway:
    try:
        return await _log_in(config, secrets, store, gate, connect_params)
    except (aiohttp.ClientError, TimeoutError) as exc:  # nio's own retries ran out
        raise HomeserverAway(type(exc).__name__) from None


async def _log_in(
    config: Config,
    secrets: Secrets,
    store: Store,
    gate: SendGate | None,
    connect_params: Callable[[], Mapping[str, str]] | None,
) -> Gateway:
    hs = config.homeserver
    store_class, store_path = crypto_store(config, connect_params or NOT_A_NODE.copy)
    client_config = AsyncClientConfig(
        encryption_enabled=True,
        store_sync_tokens=False,  # our own token, stored after handling
        pickle_key=secrets.pickle_key,
        max_timeouts=3,
        backoff_factor=0.5,
        max_timeout_retry_wait_time=10,
        request_timeout=60,
        store=store_class,
    )
    sealer = Sealer(secrets.pickle_key, "access-token")
    session = await in_thread(store.bot_session)
    if session is not None and session.user_id != hs.user_id:
        raise StartupError(
            f"the database belongs to {session.user_id}, not {hs.user_id}: use its own database"
        )
    device_id = session.device_id if session else ""

    def new_client(device: str) -> CryptoClient:
        client = CryptoClient(
            hs.url, hs.user_id, device_id=device, store_path=store_path, config=client_config
        )
        if gate is not None:
            client.gate = gate
        return client

    client = new_client(device_id)
    try:
        if session is not None:
            token = sealer.open_text(session.sealed_token, session.device_id)
            client.restore_login(hs.user_id, session.device_id, token)
            whoami = await client.whoami()
            _away_if_down(whoami)
            if isinstance(whoami, WhoamiResponse):
                log.info("reusing device %s", session.device_id)
            elif getattr(whoami, "status_code", None) == "M_UNKNOWN_TOKEN" and secrets.password:
                log.warning("stored token rejected; logging in again to device %s", device_id)
                await _password_login(client, config, secrets, store, sealer)
            else:
                raise StartupError(f"the homeserver rejected the stored session: {whoami}")
        elif secrets.access_token:
            client.access_token = secrets.access_token
            answer = await client.whoami()
            _away_if_down(answer)
            try:
                whoami = unwrap(answer, WhoamiResponse, "whoami")
            except MatrixError as exc:  # a revoked token is not waited out
                raise StartupError(
                    f"the homeserver refused the access token of {hs.user_id}: "
                    f"{exc.errcode or exc.status} {exc.message}"
                ) from None
            if not whoami.device_id:
                raise StartupError("the access token has no device; log in with a password")
            client.restore_login(hs.user_id, whoami.device_id, secrets.access_token)
            await _save_login(store, sealer, hs.user_id, whoami.device_id, secrets.access_token)
        else:
            await _password_login(client, config, secrets, store, sealer)
        if client.should_upload_keys:
            await client.keys_upload()
    except BaseException:
        await client.close()
        client.close_store()
        raise

    def reopen(old: CryptoClient) -> CryptoClient:
        """The same login on a client loaded afresh from the store."""
        fresh = new_client(str(old.device_id))
        fresh.restore_login(old.user_id, old.device_id, old.access_token)
        return fresh

    return Gateway(client, reopen)


async def _password_login(
    client: CryptoClient, config: Config, secrets: Secrets, store: Store, sealer: Sealer
) -> None:
    response = await client.login(secrets.password, config.homeserver.device_name)
    _away_if_down(response)
    try:
        login = unwrap(response, LoginResponse, "login")
    except MatrixError as exc:  # a wrong password is not waited out
        raise StartupError(
            f"the homeserver refused the login of {config.homeserver.user_id}: "
            f"{exc.errcode or exc.status} {exc.message}"
        ) from None
    await _save_login(store, sealer, login.user_id, login.device_id, login.access_token)
    log.info("logged in as %s, device %s", login.user_id, login.device_id)


async def _save_login(
    store: Store, sealer: Sealer, user_id: str, device_id: str, access_token: str
) -> None:
    """The login kept for the next start: the token sealed, bound to its device."""
    await in_thread(
        store.save_bot_session, user_id, device_id, sealer.seal_text(access_token, device_id)
    )


async def cross_sign(
    gateway: Gateway, config: Config, secrets: Secrets, store: Store, gate: SendGate | None = None
) -> KeysAPI:
    """Cross-sign the bot's device; the key API stays open for the trust checks."""
    client = gateway.client
    keys_api = KeysAPI(config.homeserver.url, str(client.access_token), gate)
    try:
        keys = await bootstrap_cross_signing(
            keys_api,
            store,
            key_sealer(secrets.pickle_key),
            config.homeserver.user_id,
            gateway.device_id,
            secrets.password,
            gateway.own_identity_keys(),
        )
    except MatrixError as exc:
        await keys_api.close()
        raise StartupError(f"cross-signing: {exc.message}") from None
    log.info(
        "cross-signed device %s; master key %s", gateway.device_id, fingerprint(keys.master.public)
    )
    return keys_api
