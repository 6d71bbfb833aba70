"""Issue 14, finding 1: an encrypted command sent again under a new event id (with a stolen
access token, no device keys needed) after a restart emptied nio's in-memory replay cache
must not run again. Against the real Synapse, with the bot restarted in between."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from nio import RoomMessageNotice
from nio.api import Api

from bot.devtools.e2ee_client import E2EEClient
from policy.ids import UserId
from tests.bot_harness import BotEnv, audited, open_dm, restart
from tests.matrix_harness import MakeClient, MakeUser


async def send_and_wait(client: E2EEClient, room_id: str, text: str, expect: str) -> str:
    """Send a command; its event id, once the bot's reply containing `expect` arrived."""
    mark = client.event_count(room_id)
    event_id = await client.send_text(room_id, text)
    await client.wait_for(
        room_id, lambda e: isinstance(e, RoomMessageNotice) and expect in e.body, 30, after=mark
    )
    return event_id


async def resend_ciphertext(client: E2EEClient, room_id: str, event_id: str) -> str:
    """Post the encrypted content of an earlier event again, as it is on the server: what
    an attacker with the access token alone can do."""
    token = str(client.client.access_token)
    method, path = Api.room_get_event(token, room_id, event_id)
    raw = await client.client.send(method, path)  # read raw: nio would decrypt it
    content: dict[str, Any] = (await raw.json())["content"]
    assert "ciphertext" in content, "the command was not encrypted"
    method, path, data = Api.room_send(token, room_id, "m.room.encrypted", content, str(uuid4()))
    answer = await client.client.send(method, path, data)
    body = await answer.json()
    assert answer.status == 200, body
    return str(body["event_id"])


async def test_a_grant_replayed_after_a_restart_is_refused_and_audited(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    target = make_user("replayed")
    grant = await send_and_wait(
        admin,
        dm,
        f'!clearance grant {target.user_id} "NATO SECRET" --nationality DEU',
        "Clearance updated",
    )
    await send_and_wait(admin, dm, f"!clearance revoke {target.user_id} all", "revoked")

    await restart(bot_env)
    replayed = await resend_ciphertext(admin, dm, grant)

    entry = await audited(bot_env, "replay.refused", replayed)
    assert entry.actor == bot_env.admin.user_id
    assert bot_env.bot is not None
    record = await bot_env.bot.commands.clearance(UserId(target.user_id))
    assert record is not None and record.revoked_at is not None, "the replayed grant ran"
