"""The gate judges joins that arrive over federation (issue 24, item 6): a remote user
invited while cleared, whose clearance is revoked before they join, is refused by the room's
resident server when their own server asks it to let them in, with the rule's reason.

Synapse runs the third-party rules on the join it drafts for /make_join, but not on the
signed join a remote server hands to /send_join: a server that kept a draft from before the
revocation (or never asked for one; the event is the remote's to build) could join through
it. The test plays that server itself, signing with its key, so the gate's refusal at
/send_join is what is tested. Two real Synapses federating over TLS on loopback (a test CA),
each with the gate; the register is a bot's database read as the gate reads it."""

from __future__ import annotations

import importlib
import json
import secrets
import sqlite3
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from signedjson.key import read_signing_keys
from signedjson.sign import sign_json
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import add_hashes_and_signatures
from synapse.events import make_event_from_dict

from bot.devtools.devserver import DevServer, DevServerError, RegisteredUser
from bot.devtools.testca import TestCA
from bot.gate.rules import LABEL_EVENT
from bot.services.rooms import label_content
from bot.storage import Origin, RoomRecord, Store, audit_key_from
from bot.storage.migrate import upgrade
from policy import make_room, parse_marking
from policy.ids import RoomId, RoomKey


class _FreshGateServer(DevServer):
    """A federating Synapse whose gate keeps nothing cached (cache_ttl_seconds 0), so a
    revocation counts at the very next request rather than within the usual two seconds
    (no test waits for a cache to run out)."""

    def _patch_config(self) -> None:
        super()._patch_config()
        yaml: Any = importlib.import_module("yaml")
        config = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        config["modules"][0]["config"]["cache_ttl_seconds"] = 0
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


class _Federation:
    """Federation requests as `origin` makes them (X-Matrix signed with its key), to `target`."""

    def __init__(self, origin: DevServer, target: DevServer, ca: TestCA) -> None:
        self.origin, self.target = origin, target
        key_path = origin.workdir / f"{origin.server_name}.signing.key"
        with key_path.open() as key_file:
            self.key = read_signing_keys(key_file)[0]
        self._tls = ssl.create_default_context(cafile=str(ca.ca_path))

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        signed = sign_json(
            {
                "method": method,
                "uri": path,
                "origin": self.origin.server_name,
                "destination": self.target.server_name,
                **({"content": body} if body is not None else {}),
            },
            self.origin.server_name,
            self.key,
        )
        key_id, signature = next(iter(signed["signatures"][self.origin.server_name].items()))
        request = urllib.request.Request(
            f"{self.target.federation_url}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={
                "Content-Type": "application/json",
                "Authorization": (
                    f'X-Matrix origin="{self.origin.server_name}",'
                    f'destination="{self.target.server_name}",key="{key_id}",sig="{signature}"'
                ),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30, context=self._tls) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise DevServerError(
                f"{method} {path} -> HTTP {exc.code} {exc.read().decode(errors='replace')}"
            ) from exc

    def join_draft(self, room_id: str, user_id: str) -> tuple[str, dict[str, Any]]:
        """/make_join: the room version and the unsigned join the resident drafts."""
        versions = "&".join(f"ver={_q(v)}" for v in KNOWN_ROOM_VERSIONS)
        reply = self.request(
            "GET", f"/_matrix/federation/v1/make_join/{_q(room_id)}/{_q(user_id)}?{versions}"
        )
        return reply["room_version"], reply["event"]

    def invite(
        self,
        room_version: str,
        room_id: str,
        sender: str,
        invitee: str,
        stripped: list[dict[str, Any]] | None = None,
    ) -> Any:
        """/invite of `invitee` (a user of the target) into the room by `sender` (of the
        origin), signed as the inviting server signs it, with the room's `stripped` state."""
        version = KNOWN_ROOM_VERSIONS[room_version]
        event: dict[str, Any] = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": sender,
            "state_key": invitee,
            "content": {"membership": "invite"},
            "origin_server_ts": int(time.time() * 1000),
            "depth": 1,
            "prev_events": [],
            "auth_events": [],
        }
        add_hashes_and_signatures(version, event, self.origin.server_name, self.key)
        event_id = make_event_from_dict(event, version).event_id
        path = f"/_matrix/federation/v2/invite/{_q(room_id)}/{_q(event_id)}"
        body = {"room_version": room_version, "event": event, "invite_room_state": stripped or []}
        return self.request("PUT", path, body)

    def send_join(self, room_version: str, draft: dict[str, Any]) -> Any:
        """/send_join of the draft, completed and signed as the joining server does."""
        version = KNOWN_ROOM_VERSIONS[room_version]
        event = {**draft, "origin_server_ts": draft.get("origin_server_ts", 0) or 1}
        add_hashes_and_signatures(version, event, self.origin.server_name, self.key)
        event_id = make_event_from_dict(event, version).event_id
        path = f"/_matrix/federation/v2/send_join/{_q(event['room_id'])}/{_q(event_id)}"
        return self.request("PUT", path, event)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, ca: TestCA
) -> Iterator[tuple[DevServer, DevServer]]:
    deu = _FreshGateServer(tmp_path_factory.mktemp("deu"), federation=ca)
    nato = DevServer(tmp_path_factory.mktemp("nato"), federation=ca)
    started: list[DevServer] = []
    try:
        for server in (deu, nato):
            server.start()
            started.append(server)
        yield deu, nato
    finally:
        for server in started:
            server.stop()


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _user(server: DevServer, prefix: str) -> RegisteredUser:
    return server.register(f"{prefix}-{secrets.token_hex(3)}", f"pw-{secrets.token_hex(8)}")


def _membership(server: DevServer, token: str, room_id: str, user_id: str) -> str | None:
    path = f"/_matrix/client/v3/rooms/{_q(room_id)}/state/m.room.member/{_q(user_id)}"
    membership: str | None = server.request("GET", path, token=token).get("membership")
    return membership


def _signed_register(path: Path, data_key: str) -> tuple[str, Store]:
    """A register written as the bot writes it (signed), which the gate verifies with the
    public key of `data_key`: its URL and the open store."""
    register = f"sqlite:///{path}"
    upgrade(register)
    store = Store.from_url(register, audit_key_from(data_key))
    store.key_audit_log()
    return register, store


def _managed_nato_room(deu: DevServer, nato: DevServer, bot: RegisteredUser, store: Store) -> str:
    """A NATO SECRET room the bot made on deu, labelled, and on its record as `nato-s`
    (members from both servers)."""
    room_id: str = deu.request(
        "POST",
        "/_matrix/client/v3/createRoom",
        {
            "preset": "private_chat",
            "initial_state": [
                {
                    "type": LABEL_EVENT,
                    "state_key": "",
                    "content": label_content(make_room(parse_marking("NATO SECRET"))),
                }
            ],
        },
        token=bot.access_token,
    )["room_id"]
    store.save_room(
        RoomRecord(
            key=RoomKey("nato-s"),
            name="NATO SECRET liaison",
            label="NATO SECRET",
            scheme="NATO",
            rank=3,
            audience=("DEU", "POL"),
            room_id=RoomId(room_id),
            origin=Origin.CONFIG,
            servers=(deu.server_name, nato.server_name),
        )
    )
    return room_id


def test_a_remote_user_revoked_after_the_invite_cannot_join(
    servers: tuple[DevServer, DevServer], ca: TestCA, tmp_path: Path
) -> None:
    deu, nato = servers
    as_nato = _Federation(nato, deu, ca)
    bot = _user(deu, "liaison")
    revoked, cleared, held = _user(nato, "revoked"), _user(nato, "cleared"), _user(nato, "held")
    data_key = "federation-gate-data-key-0123456789abcdef"
    register, store = _signed_register(tmp_path / "register.db", data_key)
    try:
        for person in (revoked, cleared, held):
            store.grant("test", person.user_id, "NATO", "NATO SECRET", 3, nationality="POL")
        deu.add_register({"bot_user_id": bot.user_id, "database": register}, data_key=data_key)
        room_id = _managed_nato_room(deu, nato, bot, store)
        for person in (revoked, cleared, held):
            deu.request(
                "POST",
                f"/_matrix/client/v3/rooms/{_q(room_id)}/invite",
                {"user_id": person.user_id},
                token=bot.access_token,
            )
        # The remote server asks for a join draft while the person is still cleared...
        version, draft = as_nato.join_draft(room_id, held.user_id)
        for person in (revoked, held):
            store.revoke("test", person.user_id)
    finally:
        store.close()
    join = f"/_matrix/client/v3/join/{_q(room_id)}?server_name={_q(deu.server_name)}"
    # Revoked after the invite: the resident server refuses the join with the reason. Asked
    # while no one from nato is in the room, so nato must ask the resident (/make_join,
    # /send_join): once a nato user is in, nato may join the next one itself and only send
    # the event on, which the resident soft-fails without a reason nato's client sees.
    with pytest.raises(DevServerError) as info:
        nato.request("POST", join, {}, token=revoked.access_token)
    message = str(info.value)
    assert "HTTP 403" in message, message
    assert f"{revoked.user_id} may not enter nato-s (NATO SECRET)" in message, message
    assert "revoked" in message, message
    assert _membership(deu, bot.access_token, room_id, revoked.user_id) == "invite"
    # Still cleared: the remote join goes through, so the path itself works.
    nato.request("POST", join, {}, token=cleared.access_token)
    assert _membership(deu, bot.access_token, room_id, cleared.user_id) == "join"
    # ...and the nato server's own gate, which manages nothing here, keeps the deu bot's
    # label whole (it judges federated state too, and must not refuse another's room).
    label = f"/_matrix/client/v3/rooms/{_q(room_id)}/state/{_q(LABEL_EVENT)}/"
    assert nato.request("GET", label, token=cleared.access_token) == deu.request(
        "GET", label, token=bot.access_token
    )
    # ...and sends it, signed, after the revocation: the resident refuses it at /send_join.
    with pytest.raises(DevServerError) as info:
        as_nato.send_join(version, draft)
    message = str(info.value)
    assert "HTTP 403" in message, message
    assert f"{held.user_id} may not enter nato-s (NATO SECRET)" in message, message
    assert _membership(deu, bot.access_token, room_id, held.user_id) == "invite"


def test_a_federated_invite_of_an_uncleared_user_is_refused_with_the_reason(
    servers: tuple[DevServer, DevServer], ca: TestCA, tmp_path: Path
) -> None:
    """`federated_user_may_invite`: another server sends this one an invite of one of its
    users into a managed room (a server in the room whose admin, or a stolen token there,
    asks). Synapse asks the gate before anything else about the invite: an uncleared
    invitee is refused with the rule's reason, in the answer and in Synapse's log; a cleared
    one passes the gate. Into a room this server is not in, the label comes with the
    invite (its stripped state): a room labelled by a bot of this server whose register
    cannot be read (its tables missing) is refused too (fails closed), where without the
    label the room would look unmanaged."""
    deu, nato = servers
    as_nato = _Federation(nato, deu, ca)
    bot, ghost = _user(deu, "liaison"), _user(deu, "ghostbot")
    uncleared, cleared, inviter = _user(deu, "uncleared"), _user(deu, "cleared"), _user(nato, "x")
    data_key = "federated-invite-data-key-0123456789abcdef"
    register, store = _signed_register(tmp_path / "register.db", data_key)
    nato_label = label_content(make_room(parse_marking("NATO SECRET")))
    try:
        store.grant("test", cleared.user_id, "NATO", "NATO SECRET", 3, nationality="DEU")
        deu.add_register({"bot_user_id": bot.user_id, "database": register}, data_key=data_key)
        room_id = _managed_nato_room(deu, nato, bot, store)
    finally:
        store.close()
    create = f"/_matrix/client/v3/rooms/{_q(room_id)}/state/m.room.create/"
    version = str(deu.request("GET", create, token=bot.access_token).get("room_version", "1"))

    offset = deu.log_path.stat().st_size
    with pytest.raises(DevServerError) as info:
        as_nato.invite(version, room_id, inviter.user_id, uncleared.user_id)
    message = str(info.value)
    log = deu.log_since(offset)
    reason = f"{uncleared.user_id} may not enter nato-s (NATO SECRET): no clearance on record"
    assert "HTTP 403" in message and reason in message, message
    what = f"{inviter.user_id}'s federated invite of {uncleared.user_id}"
    assert f"liaison gate refused {what}: {reason}" in log, log
    # A cleared invitee passes the gate (the server then takes the invite as it comes).
    answer = as_nato.invite(version, room_id, inviter.user_id, cleared.user_id)
    assert answer["event"]["state_key"] == cleared.user_id, answer

    # A room on nato only, labelled (says the invite) by a bot of deu's whose register has
    # lost its tables.
    empty = tmp_path / "ghost.db"
    sqlite3.connect(empty).execute("CREATE TABLE unrelated (x INTEGER)").connection.close()
    deu.add_register({"bot_user_id": ghost.user_id, "database": f"sqlite:///{empty}"})
    elsewhere: str = nato.request(
        "POST",
        "/_matrix/client/v3/createRoom",
        {"preset": "private_chat"},
        token=inviter.access_token,
    )["room_id"]
    path = f"/_matrix/client/v3/rooms/{_q(elsewhere)}/state/m.room.create/"
    far_version = str(
        nato.request("GET", path, token=inviter.access_token).get("room_version", "1")
    )
    stripped = [
        {"type": LABEL_EVENT, "state_key": "", "sender": ghost.user_id, "content": nato_label}
    ]
    offset = deu.log_path.stat().st_size
    with pytest.raises(DevServerError) as info:
        as_nato.invite(far_version, elsewhere, inviter.user_id, cleared.user_id, stripped)
    message = str(info.value)
    log = deu.log_since(offset)
    reason = (
        f"the clearance register of {ghost.user_id} cannot be read (OperationalError: "
        "(sqlite3.OperationalError) no such table: rooms"
    )
    assert "HTTP 403" in message and reason in message, message
    assert f"managed room {elsewhere} admits nobody until it can" in message, message
    what = f"{inviter.user_id}'s federated invite of {cleared.user_id}"
    assert f"liaison gate refused {what}: {reason}" in log, log
