"""Issue 14, finding 15: each reply an unverified device may read costs every member of
the room a fresh room key, and anyone can make the bot answer such a device: the one-off
keys are rationed per device. The messenger on fake edges, recording each send."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from bot.matrix.messenger import Messenger
from bot.tasks import Supervisor
from commands.document import doc


class FakeGateway:
    user_id = "@bot:x"

    def __init__(self) -> None:
        self.sends: list[list[Any]] = []

    async def ensure_current_members(self, room_id: str) -> None:
        return None

    async def send(self, room_id: str, content: Any, **kwargs: Any) -> str:
        self.sends.append(list(kwargs["also_to"]))
        return f"$e{len(self.sends)}"


async def test_one_off_keys_for_an_excluded_device_are_rationed() -> None:
    gateway = FakeGateway()

    async def nothing(*args: Any) -> None:
        return None

    async def audit(
        actor: str, action: str, subject: str | None, detail: dict[str, Any]
    ) -> None:  # the Audit port
        return None

    trust = SimpleNamespace(refresh=nothing)
    messenger = Messenger(
        gateway,  # type: ignore[arg-type]  # a fake of the concrete Gateway: send only
        trust,  # type: ignore[arg-type]  # a fake of the concrete DeviceTrust: refresh only
        SimpleNamespace(),  # type: ignore[arg-type]  # BotConfig: not read on this path
        SimpleNamespace(),  # type: ignore[arg-type]  # DirectRooms: not read on this path
        lambda room_id: [],
        audit,
        Supervisor(),
        nothing,
        lambda: None,
        nothing,
    )
    flooder = SimpleNamespace(user_id="@x:x", id="UNVERIFIED")
    other = SimpleNamespace(user_id="@y:x", id="ALSO")
    for _ in range(5):
        await messenger.send_notice("!r:x", doc("not acted on"), also_to=[flooder])
    await messenger.send_notice("!r:x", doc("not acted on"), also_to=[other])
    assert gateway.sends == [[flooder], [], [], [], [], [other]]
