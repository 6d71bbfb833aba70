"""Issue 24, item 9, in the running bot: a clearance row written into the database behind
the bot's back clears nobody and the admins hear of it; a managed room whose row was
changed (its room id swapped) stops the start with the row named, instead of being taken
for missing and created anew (which would abandon the real room)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select, update

from bot.startup import StartupError
from bot.storage import ClearanceRow, GrantRow, RoomRow
from tests.bot_harness import BotEnv, open_dm, talk
from tests.matrix_harness import MakeClient, MakeUser


async def test_a_forged_clearance_clears_nobody_and_the_admins_are_told(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    assert bot_env.store is not None
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    mallory = make_user("mallory")
    with bot_env.store.session() as session:  # write access to the database, no data key
        session.execute(insert(ClearanceRow).values(user_id=mallory.user_id, nationality="DEU"))
        cid = session.scalar(select(ClearanceRow.id).where(ClearanceRow.user_id == mallory.user_id))
        session.execute(
            insert(GrantRow).values(
                clearance_id=cid,
                scheme="DEU",
                level="DEU GEHEIM",
                rank=2,
                granted_at=datetime.now(UTC),
            )
        )
    refused = await talk(admin, dm, f"!invite {mallory.user_id} deu", "may not join deu")
    assert "no clearance on record" in refused.body
    alert = await admin.wait_for_text(dm, "does not verify")
    assert mallory.user_id in alert.body and "register.refused" in alert.body


async def test_a_swapped_room_id_stops_the_start_naming_the_row(bot_env: BotEnv) -> None:
    assert bot_env.store is not None
    real = bot_env.room_id("nato-s")
    await bot_env.stop()
    config = bot_env.config
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
        await bot_env.start()
    await bot_env.stop()
    store = Store.from_url(config.database_url())
    try:
        with store.session() as session:  # put back as the bot wrote it: it verifies again
            session.execute(update(RoomRow).where(RoomRow.key == "nato-s").values(room_id=real))
    finally:
        store.close()
    bot = await bot_env.start()
    assert bot.rooms.by_key["nato-s"].room_id == real
    await asyncio.sleep(0)
