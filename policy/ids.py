"""Typed identifiers: a user id is not a room id, and neither is a room key.

Each is a plain `str` at run time (`NewType`), checked by mypy only. They are made once,
where text becomes an id: the config parser, the command parser, the event router, the
store's records; everything past that edge takes the typed id.
"""

from __future__ import annotations

from typing import NewType

UserId = NewType("UserId", str)  # "@name:server"
RoomId = NewType("RoomId", str)  # "!opaque:server"
EventId = NewType("EventId", str)  # "$opaque"
RoomKey = NewType("RoomKey", str)  # the config's short name of a managed room: "nato-s"

__all__ = ["EventId", "RoomId", "RoomKey", "UserId"]
