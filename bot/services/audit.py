"""The audit port over the store: one hash-chained row per call, written off the loop."""

from __future__ import annotations

from typing import Any

from bot.storage import Store, in_thread


class StoreAudit:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def __call__(
        self, actor: str, action: str, subject: str | None, detail: dict[str, Any]
    ) -> None:
        await in_thread(self.store.append_audit, actor, action, subject, detail)
