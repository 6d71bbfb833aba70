"""The send gate in front of every homeserver request: a node that does not hold the lease
(any longer) gets nothing onto the wire, through nio's client (every nio call and its retries
go through `send`) or the key API, against the real Synapse behind a recording proxy."""

from __future__ import annotations

from pathlib import Path

import pytest
from nio import AsyncClientConfig, LoginResponse

from bot.devtools.devserver import DevServer
from bot.devtools.proxy import RecordingProxy
from bot.ha import Fenced, SendGate, boottime
from bot.matrix.cryptostore import CryptoClient, PrivateStore
from bot.matrix.trust import KeysAPI
from tests.matrix_harness import MakeUser


async def test_a_shut_gate_lets_no_request_out(
    tmp_path: Path, synapse: DevServer, make_user: MakeUser
) -> None:
    user = make_user("gate")
    proxy = RecordingProxy(synapse.base_url)
    await proxy.start()
    gate = SendGate(2.0)
    gate.renewed(boottime())  # the lease is held: open
    client = CryptoClient(
        proxy.url,
        user.user_id,
        store_path=str(tmp_path),
        config=AsyncClientConfig(encryption_enabled=True, store=PrivateStore, max_timeouts=1),
    )
    client.gate = gate
    keys = KeysAPI(proxy.url, "", gate)
    try:
        assert isinstance(await client.login(user.password), LoginResponse)
        keys = KeysAPI(proxy.url, str(client.access_token), gate)
        await keys.query([user.user_id])
        before = len(proxy.requests)
        assert before >= 2
        gate.shut()  # the lease is lost
        with pytest.raises(Fenced):
            await client.whoami()
        with pytest.raises(Fenced):
            await client.sync(timeout=0)
        with pytest.raises(Fenced):
            await client.room_redact("!r:x", "$e", "spillage", tx_id="t1")
        with pytest.raises(Fenced):
            await keys.query([user.user_id])
        assert proxy.requests[before:] == [], "a fenced node reached the homeserver"
        assert gate.refused == 4
    finally:
        await keys.close()
        await client.close()
        await proxy.stop()
