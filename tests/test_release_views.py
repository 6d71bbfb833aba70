"""An item held for release approval, everywhere the bot lists items: `!search` and the
digests show it only in its source room, marked "held for release approval" (escaped like
any item text); a target room sees nothing of it, since no copy went there; once released
it shows in the target room as any relayed item, and no longer marked at home.

The store-level tests drive the search and the digest over a real store (SQLite, and
PostgreSQL where a server is given) without a homeserver; the last test holds an item on a
real Synapse, searches and asks for digests from both rooms, approves it and looks again."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from nio import RoomMessageNotice

from bot.devtools.botenv import NATO_DIGEST, rooms_config, write_config
from bot.devtools.devserver import DevServer
from bot.devtools.e2ee_client import E2EEClient
from bot.metrics import Metrics
from bot.services.digest import HELD_MARK, DigestService, build_digest, held_mark
from bot.services.search import results_document
from bot.storage import NewHeldTarget, NewHold, RelayEntry, RelayKind, Store
from commands.document import Document
from policy.ids import RoomKey, UserId
from tests.bot_harness import BotEnv, enrol, talk
from tests.fakes import NoMessenger, no_audit
from tests.matrix_harness import MakeClient, MakeUser
from tests.test_digest_logic import item
from tests.test_search_index import DEU, NATO, NOW, World, fresh_store, open_item, world_of

ME = UserId("@me:x")
HELD = "held for release approval"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    with fresh_store(request.param) as opened:
        yield opened


@dataclass
class Views:
    """A store with the search and the digest the bot would run over it."""

    world: World
    digests: DigestService

    def hold(self, event_id: str, targets: tuple[str, ...] = ("nato-s",)) -> int:
        request = self.world.store.hold_release(
            NewHold(
                event_id, "deu", "!deu:x", "@lo:x", "DEU GEHEIM // REL TO NATO", "DEU", 3,
                NOW - timedelta(minutes=5), NOW + timedelta(hours=4),
            ),
            [NewHeldTarget(t, f"!{t}:x", "sealed") for t in targets],
        )  # fmt: skip
        return request.id

    def approve(self, request_id: int, event_id: str, target: str = "nato-s") -> None:
        """What the desk's approval writes, then the send's record: one sent copy."""
        txn = f"copy-{event_id}-{target}"
        entry = RelayEntry(txn, RelayKind.COPY, event_id, event_id, target, f"!{target}:x", "")
        _, rows = self.world.store.approve_release(request_id, [entry], "@lo2:x")
        assert [r.txn_id for r in rows] == [txn]
        self.world.store.relay_sent(txn, f"$copy-{txn}")

    async def search(self, room_key: str, *words: str) -> Document:
        return await self.world.inventory.search(
            ME, RoomKey(room_key), list(words), None, None, False
        )

    async def digest(self, room_key: str) -> Document:
        room = DEU if room_key == "deu" else NATO
        start = NOW - timedelta(hours=12)
        return await self.digests.compose(room, ["deu", "nato-s"], start, NOW)


def views_of(store: Store) -> Views:
    world = world_of(store)
    config = SimpleNamespace(digests=[], bot=SimpleNamespace(timezone="UTC", caveats=[]))
    digests = DigestService(
        config,  # type: ignore[arg-type]  # Config: only digests and bot (none, UTC)
        store,
        world.rooms,  # type: ignore[arg-type]  # RoomDirectory: only by_key and managed
        NoMessenger(),  # composes only: it posts nothing
        no_audit,
        Metrics(lambda: None),
        open_item(world.sealer),
    )
    return Views(world, digests)


def _lines_with(document: Document, word: str) -> list[str]:
    return [line for line in document.plain.splitlines() if word in line]


async def test_a_held_item_shows_at_home_marked_and_nowhere_else_until_released(
    store: Store,
) -> None:
    views = views_of(store)
    held = views.world.save(
        "deu", "DEU GEHEIM // REL TO NATO", "Convoy alpha", at=NOW - timedelta(hours=1)
    )
    other = views.world.save(
        "deu", "DEU GEHEIM // REL TO NATO", "Convoy bravo", at=NOW - timedelta(hours=2)
    )
    rid = views.hold(held)
    views.approve(views.hold(other), other)  # an item released before: shown as before

    home = await views.search("deu", "convoy")
    assert [line.endswith(HELD) for line in _lines_with(home, "Convoy")] == [True, False]
    assert "Convoy alpha" + HELD_MARK in home.plain
    home_digest = await views.digest("deu")
    assert "Convoy alpha" + HELD_MARK in home_digest.plain
    assert _lines_with(home_digest, "Convoy bravo")[0].endswith("Convoy bravo")

    # The target room: nothing of the held item, the released one as ever.
    there = await views.search("nato-s", "convoy")
    assert _lines_with(there, "Convoy") == _lines_with(there, "Convoy bravo")
    assert "1 match(es)" in there.plain and "alpha" not in there.plain
    there_digest = await views.digest("nato-s")
    assert "alpha" not in there_digest.plain and "Convoy bravo" in there_digest.plain
    assert HELD not in there.plain + there_digest.plain

    views.approve(rid, held)
    there = await views.search("nato-s", "convoy")
    assert "2 match(es)" in there.plain and "Convoy alpha" in there.plain
    there_digest = await views.digest("nato-s")
    assert "Convoy alpha" in there_digest.plain
    home = await views.search("deu", "convoy")
    home_digest = await views.digest("deu")
    assert HELD not in there.plain + there_digest.plain + home.plain + home_digest.plain
    assert store.held_item_ids() == set()


async def test_partly_released_is_still_marked_at_home_and_shown_where_released(
    store: Store,
) -> None:
    """Held for two targets, released to one: that one shows it, unmarked; home still marks
    it (a target waits); the other target sees nothing."""
    views = views_of(store)
    held = views.world.save(
        "deu", "DEU GEHEIM // REL TO NATO", "Radar kilo", at=NOW - timedelta(hours=1)
    )
    rid = views.hold(held, ("nato-s", "eu-s"))
    views.approve(rid, held, "nato-s")
    assert store.held_item_ids("eu-s") == {held} and store.held_item_ids("nato-s") == set()
    assert _lines_with(await views.search("deu", "radar"), "Radar")[0].endswith(HELD)
    there = await views.search("nato-s", "radar")
    assert "Radar kilo" in there.plain and HELD not in there.plain


def test_the_mark_is_escaped_with_the_text_and_only_in_the_source_room() -> None:
    """The mark follows the item's own text, which stays escaped in HTML; a room that lists
    another room's item (it was relayed there) never marks it."""
    shown = item("$h", "GEHEIM // REL TO NATO", DEU, 5, text="<script>x</script> & co")
    for document in (
        build_digest(DEU, [shown], NOW, NOW + timedelta(hours=1), held={"$h"}),
        results_document(DEU, "x", [shown], NOW, 1, False, {"$h"}),
    ):
        assert "&lt;script&gt;x&lt;/script&gt; &amp; co" + HELD_MARK in document.html
        assert "<script>" not in document.html
        assert "<script>x</script> & co" + HELD_MARK in document.plain
    assert held_mark(NATO, shown, {"$h"}) == ""
    assert held_mark(DEU, shown, set()) == ""
    assert HELD not in build_digest(NATO, [shown], NOW, NOW + timedelta(hours=1), held={"$h"}).plain
    assert HELD not in results_document(NATO, "x", [shown], NOW, 1, False, {"$h"}).plain


# ---------------------------------------------------------------- on a real Synapse

NOTICE = re.compile(r"Held for release approval: (R\d+)")


async def test_search_and_digests_on_synapse_before_and_after_release(
    synapse: DevServer,
    make_user: MakeUser,
    make_client: MakeClient,
    tmp_path: Path,
) -> None:
    """The officer holds an item; home (deu) finds it marked in `!search` and `!digest now`,
    the NATO room finds nothing; a second officer releases it; the NATO room now finds it,
    and home no longer marks it."""
    bot_user, admin, officer = make_user("liaison"), make_user("admin"), make_user("lo")
    second, member = make_user("lo2"), make_user("nor")
    rooms = (
        rooms_config()
        + 'approval = "second-officer"\n'
        + 'approval_from = "GEHEIM"\n'
        + f'approvers = ["{officer.user_id}", "{second.user_id}"]\n'
        + NATO_DIGEST
    )
    path = tmp_path / "config.toml"
    write_config(path, synapse, bot_user, admin.user_id, officer.user_id, rooms)
    env = BotEnv(synapse, tmp_path, bot_user, admin, officer, path)
    await env.start()
    try:
        lo, lo2, nor = (
            await make_client(officer),
            await make_client(second),
            await make_client(member),
        )
        deu, _, nato_s = await enrol(
            env,
            [
                (officer.user_id, "DEU GEHEIM", "DEU"),
                (second.user_id, "DEU GEHEIM", "DEU"),
                (member.user_id, "NATO SECRET", "NOR"),
            ],
            [(lo, "deu"), (lo2, "deu"), (nor, "nato-s")],
        )
        word = f"views{secrets.token_hex(4)}"
        mark = lo.event_count(deu)
        await lo.send_text(deu, f"[GEHEIM // REL TO NATO] <b>{word}</b> convoy")
        notice = await lo.wait_for(
            deu,
            lambda e: isinstance(e, RoomMessageNotice) and NOTICE.search(e.body) is not None,
            60,
            after=mark,
        )
        found = NOTICE.search(notice.body)
        assert found is not None
        shown = f"<b>{word}</b> convoy"

        # Held: marked at home, in the search and in the digest (escaped in HTML) ...
        home = await talk(lo, deu, f"!search {word}", "match(es)")
        assert "1 match(es)" in home.body and shown + HELD_MARK in home.body
        assert f"&lt;b&gt;{word}&lt;/b&gt; convoy{HELD_MARK}" in _html(home)
        home_digest = await _digest(lo, deu)
        assert shown + HELD_MARK in home_digest.body
        # ... and nothing of it in the NATO room.
        there = await talk(nor, nato_s, f"!search {word}", "match(es)")
        assert "0 match(es)" in there.body
        there_digest = await _digest(nor, nato_s)
        assert word not in there_digest.body

        await talk(lo2, deu, f"!release approve {found.group(1)}", "approved by")
        await nor.wait_for_text(nato_s, word, timeout=60)
        there = await talk(nor, nato_s, f"!search {word}", "match(es)")
        assert "1 match(es)" in there.body and shown in there.body
        there_digest = await _digest(nor, nato_s)
        assert shown in there_digest.body
        home = await talk(lo, deu, f"!search {word}", "match(es)")
        assert shown in home.body
        for answer in (there, there_digest, home):
            assert HELD not in answer.body
    finally:
        await env.stop()


def _html(notice: RoomMessageNotice) -> str:
    return str(notice.source["content"].get("formatted_body", ""))


async def _digest(client: E2EEClient, room_id: str) -> RoomMessageNotice:
    mark = client.event_count(room_id)
    await talk(client, room_id, "!digest now", "Digest posted in")
    digest = await client.wait_for_text(room_id, "Situation digest", after=mark)
    assert isinstance(digest, RoomMessageNotice)
    return digest
