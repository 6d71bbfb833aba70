"""Chat commands: parsing, permissions and dispatch.

Each command is declared once, in the module of its group; handlers reach the bot's services
through the protocols in `commands.services` and never import `bot/` or nio.
"""

from __future__ import annotations

from commands import (
    audit,
    clearance,
    digest,
    general,
    labels,
    membership,
    relay,
    release,
    search,
    taskforce,
)
from commands.registry import Registry


def build_registry() -> Registry:
    """Every command group, declared into one registry."""
    registry = Registry()
    for group in (
        general,
        labels,
        clearance,
        membership,
        relay,
        release,
        digest,
        search,
        taskforce,
        audit,
    ):
        group.register(registry)
    return registry
