"""Fault injection for the crash tests (tests/test_relay_crash.py, tests/test_release_crash.py),
loaded only into the bot process such a test starts (its folder goes on that process's
PYTHONPATH; Python imports `sitecustomize` at start-up). The runtime code holds no test hooks:
the process dies here, at a point the test names in LIAISON_TEST_CRASH_AT.

With exit code 70 (os._exit: no clean-up, nothing flushed):

- "after-ledger": the relay rows are written (Store.add_relays returned some), nothing sent;
- "after-send": the copy was accepted by the homeserver, its ledger row not yet marked sent
  (Store.relay_sent is where it would be).

By SIGKILL (the process sees nothing: exit status -9), around a release approval:

- "release-before-approve": an approval is about to be written (Store.approve_release is
  called), nothing of it is stored yet;
- "release-after-approve": the approval's transaction committed (the targets approved, their
  ledger rows pending), nothing sent;
- "release-after-send": as "after-send", by SIGKILL: the released copy was accepted by the
  homeserver, its ledger row not yet marked sent.
"""

from __future__ import annotations

import os
import signal
from typing import Any

CRASH_EXIT = 70
_point = os.environ.get("LIAISON_TEST_CRASH_AT")


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


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
elif _point == "release-before-approve":
    from bot.storage import Store

    def _die_before_approving(self: Store, *args: Any, **kwargs: Any) -> Any:
        _kill()

    Store.approve_release = _die_before_approving  # type: ignore[method-assign]  # fault injection: the crash point is the method
elif _point == "release-after-approve":
    from bot.storage import Store

    _approve_release = Store.approve_release

    def _approve_then_die(self: Store, *args: Any, **kwargs: Any) -> Any:
        stored, rows = _approve_release(self, *args, **kwargs)
        if rows:
            _kill()
        return stored, rows

    Store.approve_release = _approve_then_die  # type: ignore[method-assign]  # fault injection: the crash point is the method
elif _point == "release-after-send":
    from bot.storage import Store

    def _killed_before_recording(self: Store, *args: Any, **kwargs: Any) -> Any:
        _kill()

    Store.relay_sent = _killed_before_recording  # type: ignore[method-assign]  # fault injection: the crash point is the method
elif _point:
    raise SystemExit(f"LIAISON_TEST_CRASH_AT: unknown crash point {_point!r}")
