"""Fault injection for tests/test_relay_crash.py, loaded only into the bot process that test
starts (its folder goes on that process's PYTHONPATH; Python imports `sitecustomize` at
start-up). The runtime code holds no test hooks: the process dies here, at a point the test
names in LIAISON_TEST_CRASH_AT, with exit code 70:

- "after-ledger": the relay rows are written (Store.add_relays returned some), nothing sent;
- "after-send": the copy was accepted by the homeserver, its ledger row not yet marked sent
  (Store.relay_sent is where it would be).
"""

from __future__ import annotations

import os
from typing import Any

CRASH_EXIT = 70
_point = os.environ.get("LIAISON_TEST_CRASH_AT")

if _point == "after-ledger":
    from bot.storage import Store

    _add_relays = Store.add_relays

    def _add_relays_then_die(self: Store, *args: Any, **kwargs: Any) -> Any:
        rows = _add_relays(self, *args, **kwargs)
        if rows:
            os._exit(CRASH_EXIT)
        return rows

    Store.add_relays = _add_relays_then_die  # type: ignore[method-assign]  # fault injection: the crash point is the method
elif _point == "after-send":
    from bot.storage import Store

    def _die_before_recording(self: Store, *args: Any, **kwargs: Any) -> Any:
        os._exit(CRASH_EXIT)

    Store.relay_sent = _die_before_recording  # type: ignore[method-assign]  # fault injection: the crash point is the method
elif _point:
    raise SystemExit(f"LIAISON_TEST_CRASH_AT: unknown crash point {_point!r}")
