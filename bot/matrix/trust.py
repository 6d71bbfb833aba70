"""Device trust: the bot's own cross-signing, who else's devices it trusts,
and identity pinning.

Under `device_trust = "cross-signed"` a device is trusted only when its owner signed it
(device ← self-signing ← master, checked here from /keys/query: nio's KeysQueryResponse drops
the cross-signing keys). Under `"tofu"` every device of the user is trusted as seen. In both,
a cleared user whose master key differs from the pinned one gets nothing until an admin
confirms the new key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp

from bot.ha import SendGate
from bot.matrix.crosssign import CrossSigningKeys, Identity, check_identity
from bot.matrix.gateway import MatrixError
from bot.storage import ClearanceRecord, Store
from bot.storage.sealing import Sealer
from policy.ids import UserId

log = logging.getLogger(__name__)

Alert = Callable[[ClearanceRecord, str], Awaitable[None]]


class AuthRequired(MatrixError):
    """The homeserver wants user-interactive auth; `session` continues the flow."""

    def __init__(self, what: str, session: str | None) -> None:
        super().__init__(what, "M_UNAUTHORIZED", "user-interactive auth required", 401)
        self.session = session


class KeysAPI:
    """The three key endpoints nio does not cover, over aiohttp with the bot's token."""

    def __init__(self, base_url: str, access_token: str, gate: SendGate | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = access_token
        self._session: aiohttp.ClientSession | None = None
        self._gate = gate or SendGate.open_always()  # a fenced node asks nothing either

    async def _request(self, method: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._gate.check()
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        url = f"{self.base_url}/_matrix/client/v3{path}"
        headers = {"Authorization": f"Bearer {self._token}"}
        async with self._session.request(method, url, json=dict(body), headers=headers) as resp:
            data: dict[str, Any] = await resp.json(content_type=None)
            if resp.status == 401 and "flows" in data:
                raise AuthRequired(f"{method} {path}", data.get("session"))
            if resp.status >= 400:
                raise MatrixError(
                    f"{method} {path}", data.get("errcode"), str(data.get("error", "")), resp.status
                ) from None
            return data

    async def query(self, users: Iterable[str]) -> dict[str, Any]:
        return await self._request("POST", "/keys/query", {"device_keys": {u: [] for u in users}})

    async def upload_cross_signing(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._request("POST", "/keys/device_signing/upload", body)

    async def upload_signatures(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._request("POST", "/keys/signatures/upload", body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def key_sealer(pickle_key: str) -> Sealer:
    return Sealer(pickle_key, "cross-signing")


async def bootstrap_cross_signing(
    api: KeysAPI,
    store: Store,
    sealer: Sealer,
    user_id: str,
    device_id: str,
    password: str | None,
    own_keys: Mapping[str, str],
) -> CrossSigningKeys:
    """Make the bot a cross-signed participant: keys generated once (or reused), uploaded if
    the server lacks them, and the bot's device signed by its self-signing key.

    `own_keys` are the device's identity keys as its own account holds them ("ed25519",
    "curve25519"): the device the server lists under the bot's id is signed only if it has
    exactly those keys, or a homeserver could get a device of its choosing signed as the bot."""
    saved = await asyncio.to_thread(store.cross_signing)
    keys = (
        CrossSigningKeys.from_json(sealer.open_text(saved[2], user_id))
        if saved
        else CrossSigningKeys.generate(user_id)
    )
    query = await api.query([user_id])
    on_server = check_identity(user_id, query)
    if on_server.master != keys.master.public:
        body = keys.upload_body()
        try:
            await api.upload_cross_signing(body)
        except AuthRequired as exc:
            if password is None:
                raise MatrixError(
                    "cross-signing",
                    exc.errcode,
                    "the account already has other cross-signing keys; replacing them needs the "
                    "password (set password_env) or import the bot's recovery file",
                    exc.status,
                ) from None
            auth = {
                "type": "m.login.password",
                "password": password,
                "session": exc.session,
                "identifier": {"type": "m.id.user", "user": user_id},
            }
            await api.upload_cross_signing({**body, "auth": auth})
        log.info("uploaded cross-signing keys (master %s)", keys.master.public)
        query = await api.query([user_id])
    if saved is None or saved[1] != keys.master.public:
        await asyncio.to_thread(
            store.save_cross_signing,
            user_id,
            keys.master.public,
            sealer.seal_text(keys.to_json(), user_id),
            user_id,
        )
    device = query.get("device_keys", {}).get(user_id, {}).get(device_id)
    if device is None:
        raise MatrixError("cross-signing", None, f"own device {device_id} not on the server", None)
    listed = device.get("keys", {}) if isinstance(device, dict) else {}
    for algorithm in ("ed25519", "curve25519"):
        if listed.get(f"{algorithm}:{device_id}") != own_keys.get(algorithm):
            raise MatrixError(
                "cross-signing",
                None,
                f"the server lists device {device_id} with a {algorithm} key that is not this "
                "device's own: refusing to sign it",
                None,
            )
    if device_id not in check_identity(user_id, query).signed_devices:
        signed = keys.sign_device(device)
        result = await api.upload_signatures({user_id: {device_id: signed}})
        if result.get("failures"):
            raise MatrixError(
                "cross-signing", None, f"signing own device: {result['failures']}", None
            )
        log.info("signed own device %s with the self-signing key", device_id)
    return keys


class DeviceTrust:
    """Which devices get room keys and whose commands count (the trusted-sender gate)."""

    def __init__(
        self,
        policy: str,
        api: KeysAPI,
        store: Store,
        record_of: Callable[[UserId], ClearanceRecord | None],
        on_record: Callable[[ClearanceRecord], None],
        alert: Alert,
    ) -> None:
        self.policy = policy
        self.api = api
        self.store = store
        self._record_of = record_of
        self._on_record = on_record
        self._alert = alert
        self._identities: dict[str, Identity] = {}
        self._stale: set[str] = set()
        self._lock = asyncio.Lock()

    def invalidate(self, users: Iterable[str]) -> None:
        """Device lists changed (sync's device_lists.changed): the next `refresh` naming
        these users fetches them again.

        The identity last checked stays in use until then. Dropping it instead left a
        window, between a sync's invalidate and its refresh, in which a send running
        concurrently judged the user's devices unchecked: a member who had just joined was
        left out of the room key they were about to need (a flaky "unable to decrypt")."""
        self._stale.update(users)

    async def refresh(self, users: Iterable[str]) -> None:
        """Fetch and check identities not in the cache or changed since, pinning or
        flagging master keys."""
        async with self._lock:
            missing = sorted({u for u in users if u not in self._identities or u in self._stale})
            if not missing:
                return
            self._stale.difference_update(missing)  # a change seen during the query stays
            try:
                query = await self.api.query(missing)
            except (MatrixError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("keys query failed (%s): those users' devices stay untrusted", exc)
                for user in missing:  # what could not be checked again is not trusted
                    self._identities.pop(user, None)
                return
            for user in missing:
                identity = check_identity(user, query)
                self._identities[user] = identity
                await self._pin(identity)

    async def _pin(self, identity: Identity) -> None:
        record = self._record_of(UserId(identity.user_id))
        if record is None or identity.master is None:
            return
        if record.identity_key is None:
            updated = await asyncio.to_thread(
                self.store.pin_identity,
                identity.user_id,
                identity.master,
                "liaison-bot",
                "identity.pinned",
            )
            if updated is not None:
                self._on_record(updated)
        elif record.identity_key != identity.master:
            flagged = await asyncio.to_thread(
                self.store.flag_identity_change, identity.user_id, identity.master
            )
            if flagged is not None:
                self._on_record(flagged)
                log.warning("identity of %s changed: key sharing stopped", identity.user_id)
                await self._alert(flagged, identity.master)

    def blocked(self, user_id: str) -> str | None:
        """Why this user gets nothing now (a changed identity), or None."""
        record = self._record_of(UserId(user_id))
        identity = self._identities.get(user_id)
        if record is None or record.identity_key is None or identity is None:
            return None
        if identity.master is not None and identity.master != record.identity_key:
            return f"{user_id}'s cross-signing identity changed and awaits an admin's confirmation"
        return None

    def device_problem(self, user_id: str, device_id: str, ed25519: str) -> str | None:
        """None when the device passes the policy; otherwise why not, for the user."""
        blocked = self.blocked(user_id)
        if blocked:
            return blocked
        if self.policy == "tofu":
            return None
        identity = self._identities.get(user_id)
        if identity is None:
            return f"the keys of {user_id} could not be checked"
        if identity.master is None:
            return f"{user_id} has not set up cross-signing"
        if identity.signed_devices.get(device_id) != ed25519:
            why = identity.problem or "not signed by its owner's self-signing key"
            return f"device {device_id} of {user_id} is not verified by its owner ({why})"
        return None

    def trusted(self, user_id: str, device_id: str, ed25519: str) -> bool:
        return self.device_problem(user_id, device_id, ed25519) is None

    def identity(self, user_id: str) -> Identity | None:
        return self._identities.get(user_id)
