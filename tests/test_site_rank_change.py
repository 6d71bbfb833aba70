"""A site schemes file that changes the rank of a label already on record (attack review 25,
HIGH): here one that redefines DEU with GEHEIM at rank 2 (packaged: 3) and VS-VERTRAULICH
at rank 3 (packaged: 2). Nothing on record moves with it: a task-force room is not restored
(audited, told to the admins), a configured room stops the start, the gate refuses entry to
the room, and a clearance granted at the old rank is used for nothing (audited, told once).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from bot.config import parse_config
from bot.gate import rules
from bot.gate.config import RegisterSpec
from bot.gate.rules import Gate, Register, RoomLabel
from bot.metrics import Metrics
from bot.schemes import read_schemes_file
from bot.services.membership import Membership
from bot.services.register import ClearanceRegister
from bot.services.rooms import ManagedRoom, RoomDirectory
from bot.startup import StartupError
from bot.storage import Origin, RoomRecord, Store, audit_key_from
from bot.storage.migrate import upgrade
from bot.storage.register_reads import policy_clearance
from bot.storage.store import register_public_key
from commands.document import Document
from policy import current, install_catalogue, make_room, may_enter, parse_marking
from policy.ids import RoomId, RoomKey, UserId
from tests.test_gate_creator_power import ADOPTED, BOT, CONFIG, _Gateway

TF = RoomId("!tf:example.org")
DATA_KEY = "site-rank-change-data-key-0123456789"
SITE_DEU = """\
[[schemes]]
code = "DEU"
name = "Germany"
levels = [
    { rank = 4, name = "STRENG GEHEIM" },
    { rank = 2, name = "GEHEIM" },
    { rank = 3, name = "VS-VERTRAULICH" },
    { rank = 1, name = "VS-NUR FÜR DEN DIENSTGEBRAUCH" },
]
"""


@pytest.fixture(autouse=True)
def packaged_catalogue() -> Iterator[None]:
    previous = current()
    rules._policy_room.cache_clear()
    yield
    install_catalogue(previous)
    rules._policy_room.cache_clear()


def install_site_deu(tmp_path: Path) -> None:
    """What `[bot] schemes_file` (or the gate's `schemes_file`) does at start."""
    path = tmp_path / "site_deu.toml"
    path.write_text(SITE_DEU, encoding="utf-8")
    install_catalogue(read_schemes_file(path))
    assert current().overrides == ("DEU",)
    assert parse_marking("DEU GEHEIM").rank == 2


class _Joined(_Gateway):
    async def joined_rooms(self) -> set[str]:
        return {ADOPTED, TF}


def _directory(store: Store, tmp_path: Path, config_text: str = CONFIG) -> RoomDirectory:
    config = parse_config(config_text)
    config._base_dir = tmp_path
    return RoomDirectory(config, store, _Joined("11", BOT))  # type: ignore[arg-type]  # _Gateway: a fake of the concrete Gateway, the state calls only


def test_the_message_names_both_readings_and_the_site_file(tmp_path: Path) -> None:
    from policy import record_mismatch  # here: the other tests run on code without it

    assert record_mismatch(parse_marking("DEU GEHEIM"), "DEU GEHEIM", "DEU", 3) is None
    install_site_deu(tmp_path)
    assert record_mismatch(parse_marking("DEU GEHEIM"), "DEU GEHEIM", "DEU", 3) == (
        "on record as DEU GEHEIM (DEU, rank 3), but the schemes in force read it as "
        "DEU GEHEIM (DEU, rank 2) (DEU is redefined by the site schemes file)"
    )


# ---------------------------------------------------------------- the bot's rooms


async def test_a_task_force_room_whose_rank_changed_is_not_restored(
    store: Store, tmp_path: Path
) -> None:
    """The review's reproduction: stored DEU GEHEIM rank 3, restored at rank 2 without a
    word. Now: skipped, audited as room.label.changed, and told to the admins."""
    store.save_room(
        RoomRecord(
            key=RoomKey("tf-geheim"),
            name="task force",
            label="DEU GEHEIM",
            scheme="DEU",
            rank=3,
            audience=("DEU",),
            room_id=TF,
            origin=Origin.CHAT,
            servers=("example.org",),
        ),
        "@sec:example.org",
    )
    install_site_deu(tmp_path)
    directory = _directory(store, tmp_path)
    await directory.provision_all()
    assert "tf-geheim" not in directory.by_key and TF not in directory.by_id
    assert "nato-s" in directory.by_key  # the rest starts
    changed = [e for e in store.recent_audit(20) if e.action == "room.label.changed"]
    assert [(e.subject, e.detail["label"], e.detail["rank"]) for e in changed] == [
        ("tf-geheim", "DEU GEHEIM", 3)
    ]
    assert "read it as DEU GEHEIM (DEU, rank 2)" in changed[0].detail["reason"]
    alerts: list[Document] = []

    async def alert(document: Document) -> None:
        alerts.append(document)

    await directory.revalidate(alert)
    told = "\n".join(d.plain for d in alerts)
    assert "Task-force rooms not restored" in told
    assert "tf-geheim" in told and "on record as DEU GEHEIM (DEU, rank 3)" in told
    alerts.clear()
    await directory.revalidate(alert)
    assert not any("tf-geheim" in d.plain for d in alerts), "told once"


async def test_a_configured_room_whose_rank_changed_stops_the_start(
    store: Store, tmp_path: Path
) -> None:
    config = CONFIG.replace('label = "NATO SECRET"', 'label = "DEU GEHEIM"')
    await _directory(store, tmp_path, config).provision_all()  # stored at rank 3
    install_site_deu(tmp_path)
    with pytest.raises(StartupError, match=r"nato-s.*on record as DEU GEHEIM \(DEU, rank 3\)"):
        await _directory(store, tmp_path, config).provision_all()
    assert [e.subject for e in store.recent_audit(5) if e.action == "room.label.changed"] == [
        "nato-s"
    ]


# ---------------------------------------------------------------- the gate


def _register_db(tmp_path: Path) -> str:
    """A signed register, written under the packaged schemes: a DEU GEHEIM room (rank 3)
    and a DEU VS-VERTRAULICH one (rank 2); @high holds DEU STRENG GEHEIM (4, unchanged by
    the site file), @vsv DEU VS-VERTRAULICH (2: rank 3 in the site file)."""
    url = f"sqlite:///{tmp_path / 'register.db'}"
    upgrade(url)
    store = Store.from_url(url, audit_key_from(DATA_KEY))
    store.key_audit_log()
    try:
        for key, label, rank in (("geheim", "DEU GEHEIM", 3), ("vsv", "DEU VS-VERTRAULICH", 2)):
            store.save_room(
                RoomRecord(
                    key=RoomKey(key),
                    name=key,
                    label=label,
                    scheme="DEU",
                    rank=rank,
                    audience=("DEU",),
                    room_id=RoomId(f"!{key}:hs"),
                    origin=Origin.CHAT,
                )
            )
        store.grant("t", "@high:hs", "DEU", "DEU STRENG GEHEIM", 4, nationality="DEU")
        store.grant("t", "@vsv:hs", "DEU", "DEU VS-VERTRAULICH", 2, nationality="DEU")
    finally:
        store.close()
    return url


def test_the_gate_refuses_a_room_whose_label_is_read_at_another_rank(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = _register_db(tmp_path)
    install_site_deu(tmp_path)
    spec = RegisterSpec(
        bot_user_id=UserId(BOT), database=url, register_key=register_public_key(DATA_KEY)
    )
    register = Register(spec, ttl=2.0)
    gate = Gate(lambda: {BOT: register}, today=lambda: date(2026, 12, 3))
    label = RoomLabel(True, BOT)
    try:
        with caplog.at_level("WARNING", logger="bot.gate.rules"):
            verdict = gate.may_enter("@high:hs", "!geheim:hs", label)
            again = gate.may_enter("@high:hs", "!geheim:hs", label)
        assert not verdict, verdict.reason
        assert verdict.reason == (
            "geheim (DEU GEHEIM) admits nobody: its label is on record as DEU GEHEIM "
            "(DEU, rank 3), but the schemes in force read it as DEU GEHEIM (DEU, rank 2) "
            "(DEU is redefined by the site schemes file)"
        )
        assert not again
        assert caplog.text.count("managed room geheim admits nobody") == 1, "logged once"
    finally:
        register.close()


def test_the_gate_does_not_use_a_grant_read_at_another_rank(tmp_path: Path) -> None:
    """@vsv was granted DEU VS-VERTRAULICH at rank 2; the site file puts it at 3. A room
    made under the site file at DEU VS-VERTRAULICH (rank 3) would admit them (a raised
    clearance): the grant counts for nothing, and the refusal says why."""
    url = _register_db(tmp_path)
    install_site_deu(tmp_path)
    store = Store.from_url(url, audit_key_from(DATA_KEY))
    try:
        store.save_room(
            RoomRecord(
                key=RoomKey("vsv-new"),
                name="vsv-new",
                label="DEU VS-VERTRAULICH",
                scheme="DEU",
                rank=3,
                audience=("DEU",),
                room_id=RoomId("!vsv-new:hs"),
                origin=Origin.CHAT,
            )
        )
    finally:
        store.close()
    spec = RegisterSpec(
        bot_user_id=UserId(BOT), database=url, register_key=register_public_key(DATA_KEY)
    )
    register = Register(spec, ttl=2.0)
    gate = Gate(lambda: {BOT: register}, today=lambda: date(2026, 12, 3))
    try:
        verdict = gate.may_enter("@vsv:hs", "!vsv-new:hs", RoomLabel(True, BOT))
        assert not verdict
        assert (
            "clearance of @vsv:hs: grant DEU VS-VERTRAULICH on record at rank 2, but the "
            "schemes in force put DEU VS-VERTRAULICH at rank 3 (redefined by the site "
            "schemes file): not used until it is granted again"
        ) in verdict.reason
    finally:
        register.close()


# ---------------------------------------------------------------- clearances in the bot


class _Control:
    def __init__(self, members: dict[UserId, bool]) -> None:
        self._members = members

    def members(self, room_id: str) -> dict[UserId, bool] | None:
        return self._members

    async def invite(self, room_id: str, user_id: str) -> None:
        raise AssertionError(f"invited {user_id}")

    async def kick(self, room_id: str, user_id: str, reason: str) -> None:
        del self._members[UserId(user_id)]


async def test_a_grant_read_at_another_rank_admits_nobody_and_is_told_once(
    store: Store, tmp_path: Path
) -> None:
    register = ClearanceRegister(store)
    register.grant("@sec:x", "@vsv:x", "DEU VS-VERTRAULICH", nationality="DEU")  # rank 2
    register.grant("@sec:x", "@ok:x", "DEU STRENG GEHEIM", nationality="DEU")  # rank 4
    install_site_deu(tmp_path)
    room = ManagedRoom(
        RoomKey("vsv"),
        "vsv",
        make_room(parse_marking("DEU VS-VERTRAULICH"), ("DEU",)),  # rank 3 now
        RoomId("!vsv:x"),
        Origin.CHAT,
    )
    record = store.clearance("@vsv:x")
    assert record is not None
    decision = may_enter("@vsv:x", policy_clearance(record), room.policy, date(2026, 1, 1))
    assert not decision, decision.reason  # read at rank 3, it would admit them
    assert "on record at rank 2" in decision.reason
    members = {UserId("@vsv:x"): True, UserId("@ok:x"): True, UserId("@bot:x"): True}
    audited: list[tuple[str, str | None, dict[str, Any]]] = []

    async def audit(actor: str, action: str, subject: str | None, detail: dict[str, Any]) -> None:
        audited.append((action, subject, detail))

    async def check_identity(user: UserId) -> None:
        return None

    membership = Membership(
        parse_config(CONFIG).bot,
        store,
        register,
        _RoomsOf(room),  # type: ignore[arg-type]  # RoomDirectory: only by_id and by_key
        _Control(members),
        audit,
        Metrics(lambda: None),
        partner_of=lambda room_id: None,
        identity_confirmed=lambda user: None,
        check_identity=check_identity,
    )
    membership.user_id = UserId("@bot:x")
    alerts: list[Document] = []

    async def alert(document: Document) -> None:
        alerts.append(document)

    removed = await membership.sweep(alert)
    assert removed == [("vsv", "@vsv:x")], "at rank 2 it was never enough; read at 3 it would be"
    assert [(a, s) for a, s, _ in audited if a == "clearance.unusable"] == [
        ("clearance.unusable", "@vsv:x")
    ]
    assert len(alerts) == 1 and "@vsv:x" in alerts[0].plain and "@ok:x" not in alerts[0].plain
    await membership.sweep(alert)
    assert len(alerts) == 1, "told once"
    register.grant("@sec:x", "@vsv:x", "DEU VS-VERTRAULICH", nationality="DEU")  # again: rank 3
    record = store.clearance("@vsv:x")
    assert record is not None and not policy_clearance(record).unusable
    assert may_enter("@vsv:x", policy_clearance(record), room.policy, date(2026, 1, 1))


class _RoomsOf:
    def __init__(self, room: ManagedRoom) -> None:
        self.by_id = {room.room_id: room}
        self.by_key = {room.key: room}
