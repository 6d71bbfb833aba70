"""Issue 24, item 9, in the running bot: a clearance row written into the database behind
the bot's back clears nobody and the admins hear of it; a managed room whose row was
changed (its room id swapped) stops the start with the row named, instead of being taken
for missing and created anew (which would abandon the real room)."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from bot.startup import StartupError
from bot.storage import RoomRow
from tests.bot_harness import BotEnv, open_dm, talk
from tests.matrix_harness import MakeClient, MakeUser
from tests.test_register_integrity import _forge


async def test_a_forged_clearance_clears_nobody_and_the_admins_are_told(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    assert bot_env.store is not None
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    mallory = make_user("mallory")
    # write access to the database, no data key
    _forge(bot_env.store, mallory.user_id, "DEU GEHEIM", "DEU", 2)
    refused = await talk(admin, dm, f"!invite {mallory.user_id} deu", "may not join deu")
    assert "no clearance on record" in refused.body
    alert = await admin.wait_for_text(dm, "does not verify")
    assert mallory.user_id in alert.body and "register.refused" in alert.body


async def test_a_swapped_room_id_stops_the_start_naming_the_row(own_bot_env: BotEnv) -> None:
    """A bot of its own: its start is made to fail on a row changed behind its back."""
    assert own_bot_env.store is not None
    real = own_bot_env.room_id("nato-s")
    await own_bot_env.stop()
    config = own_bot_env.config
    from bot.storage import Store

    store = Store.from_url(config.database_url())
    try:
        with store.session() as session:
            session.execute(
                update(RoomRow).where(RoomRow.key == "nato-s").values(room_id="!forged:x")
            )
    finally:
        store.close()
    with pytest.raises(StartupError, match=r"\(nato-s\): its row in the database does not verify"):
        await own_bot_env.start()
    await own_bot_env.stop()
    store = Store.from_url(config.database_url())
    try:
        with store.session() as session:  # put back as the bot wrote it: it verifies again
            session.execute(update(RoomRow).where(RoomRow.key == "nato-s").values(room_id=real))
    finally:
        store.close()
    bot = await own_bot_env.start()
    assert bot.rooms.by_key["nato-s"].room_id == real
