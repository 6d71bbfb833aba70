"""The homeserver gate: a Synapse module that enforces the clearance register server-side.

`LiaisonGate` (in `bot.gate.module`) imports Synapse, so it is loaded only when asked for:
the bot and its CLI use `bot.gate.config` and `bot.gate.rules` without Synapse installed.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "LiaisonGate":
        from bot.gate.module import LiaisonGate

        return LiaisonGate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
