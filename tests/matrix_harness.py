"""Pytest plugin for integration tests against a real Synapse, with E2EE test clients.

Loaded from tests/conftest.py as ``pytest_plugins = ["tests.matrix_harness"]`` (or ad hoc with
``pytest -p tests.matrix_harness``). It provides:

* ``synapse`` (session): one started `bot.devtools.devserver.DevServer` for the whole run. Tests share
  it, so they must not assume an empty server: every user comes from `make_user`, which adds
  a random suffix, and every room is created by the test that uses it.
* ``make_user`` (session): ``make_user("alice", admin=False, logout=False) -> RegisteredUser``.
* ``make_client`` (function, async): ``await make_client(user, auto_join=False) ->
  E2EEClient``, logged in as a fresh device with its own crypto store and already syncing;
  every client it made is stopped when the test ends.
* ``synapse_without_gate`` (session), with ``make_user_without_gate`` and
  ``make_client_without_gate``: the same on a second Synapse that does not load the
  homeserver gate, started (on a free loopback port) only when a test asks for it. For the
  tests of the bot's own enforcement: with the gate, the server refuses whoever the bot would
  remove, so the bot's removal paths never run.

Event loops (pytest-asyncio 1.5, ``asyncio_mode = "auto"``,
``asyncio_default_fixture_loop_scope = "session"``): async fixtures, including the
function-scoped ``make_client``, run in the session-wide loop, and an E2EE client (its aiohttp
session, its sync task) belongs to the loop it first ran in. By default pytest-asyncio runs
each async test in its own loop, so every async test that uses ``make_client`` (or any session-loop async
fixture) must run in the session loop::

    @pytest.mark.asyncio(loop_scope="session")
    async def test_relay(make_user: MakeUser, make_client: MakeClient) -> None: ...

pyproject.toml now sets ``asyncio_default_test_loop_scope = "session"``, which makes that
the default for every async test, so the mark is only needed if that setting goes away.
Without either, ``make_client`` raises a RuntimeError that says so (else the client would
live in the test's loop and leak past the fixture's teardown). A module-wide
``pytestmark = pytest.mark.asyncio(loop_scope="session")`` also works, but pytest-asyncio
then warns on every *synchronous* test in that module ("marked with '@pytest.mark.asyncio'
but it is not an async function").

`E2EEClient` is the *user* side of the tests, so it trusts every device it sees (the bot must
not, and does not share this code). Its name avoids pytest's ``Test*`` collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Protocol

import pytest

from bot.devtools.devserver import DevServer, RegisteredUser
from bot.devtools.e2ee_client import E2EEClient, cross_sign
from bot.matrix.crosssign import CrossSigningKeys


class MakeUser(Protocol):
    def __call__(
        self, localpart_prefix: str = "user", admin: bool = False, *, logout: bool = False
    ) -> RegisteredUser: ...


class MakeClient(Protocol):
    async def __call__(
        self, user: RegisteredUser, *, auto_join: bool = False, cross_signed: bool = True
    ) -> E2EEClient: ...


def _running(server: DevServer) -> Iterator[DevServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """One real Synapse for the whole run, with the homeserver gate; ~2 s to start."""
    yield from _running(DevServer(tmp_path_factory.mktemp("synapse")))


@pytest.fixture(scope="session")
def synapse_without_gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """A second Synapse, without the homeserver gate: someone the bot would refuse can be
    invited or join behind its back, and only the bot's own enforcement removes them."""
    yield from _running(DevServer(tmp_path_factory.mktemp("synapse-nogate"), gate=False))


def users_on(server: DevServer) -> MakeUser:
    """Register users with unique names, so tests sharing the server never collide."""
    counter = itertools.count(1)

    def make(
        localpart_prefix: str = "user", admin: bool = False, *, logout: bool = False
    ) -> RegisteredUser:
        localpart = f"{localpart_prefix.lower()}-{next(counter)}-{secrets.token_hex(3)}"
        return server.register(localpart, f"pw-{secrets.token_hex(8)}", admin, logout=logout)

    return make


@pytest.fixture(scope="session")
def make_user(synapse: DevServer) -> MakeUser:
    return users_on(synapse)


@pytest.fixture(scope="session")
def make_user_without_gate(synapse_without_gate: DevServer) -> MakeUser:
    return users_on(synapse_without_gate)


@pytest.fixture(scope="session")
def identities() -> dict[str, CrossSigningKeys]:
    """Each test user's cross-signing keys, as that user's other client would keep them."""
    return {}


@contextlib.asynccontextmanager
async def clients_on(
    server: DevServer,
    tmp_path_factory: pytest.TempPathFactory,
    identities: dict[str, CrossSigningKeys],
) -> AsyncIterator[MakeClient]:
    """Started E2EE clients, each with its own store, all stopped at the end. Each new
    device is cross-signed by its owner unless `cross_signed=False` (an unverified device)."""
    clients: list[E2EEClient] = []
    fixture_loop = asyncio.get_running_loop()

    async def make(
        user: RegisteredUser, *, auto_join: bool = False, cross_signed: bool = True
    ) -> E2EEClient:
        if asyncio.get_running_loop() is not fixture_loop:
            # Otherwise the client would live in the test's own loop and could not be
            # stopped by this fixture's teardown, which runs in the session loop.
            raise RuntimeError(
                "make_client used from a test outside the session event loop: mark the test "
                "with @pytest.mark.asyncio(loop_scope='session') (see tests/matrix_harness.py)"
            )
        store = tmp_path_factory.mktemp("nio-store")
        client = await E2EEClient.create(server, user, store, auto_join=auto_join)
        clients.append(client)
        if cross_signed:
            await cross_sign(server, client, identities)
        await client.start()
        return client

    try:
        yield make
    finally:
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)


@pytest.fixture
async def make_client(
    synapse: DevServer,
    tmp_path_factory: pytest.TempPathFactory,
    identities: dict[str, CrossSigningKeys],
) -> AsyncIterator[MakeClient]:
    """E2EE clients on `synapse`, stopped after the test (`clients_on`)."""
    async with clients_on(synapse, tmp_path_factory, identities) as make:
        yield make


@pytest.fixture
async def make_client_without_gate(
    synapse_without_gate: DevServer,
    tmp_path_factory: pytest.TempPathFactory,
    identities: dict[str, CrossSigningKeys],
) -> AsyncIterator[MakeClient]:
    """E2EE clients on `synapse_without_gate`, stopped after the test."""
    async with clients_on(synapse_without_gate, tmp_path_factory, identities) as make:
        yield make


__all__ = [
    "E2EEClient",
    "MakeClient",
    "MakeUser",
    "clients_on",
    "cross_sign",
    "identities",
    "make_client",
    "make_client_without_gate",
    "make_user",
    "make_user_without_gate",
    "synapse",
    "synapse_without_gate",
    "users_on",
]
