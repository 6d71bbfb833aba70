"""The values of a bulk change of the clearance register (`liaison-bot clearance import`):
the state a file asks for, person by person, and what applying it changes.

Why a state and not a list of commands: an export read back in must change nothing, and a
file edited by hand says what the register should hold, not how to get there."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from bot.storage.records import GrantRecord, StoreError


class ChangeKind(StrEnum):
    ADDED = "added"  # no record before: a first grant
    CHANGED = "changed"  # a record whose grants, caveats, nationality or expiry differ
    REVOKED = "revoked"  # an active record the file revokes (or leaves out, --revoke-missing)
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class WantedClearance:
    """One person as the file wants them. `where` names the row ("line 4", "clearances[3]")
    in every error about it. A revoked person's other fields are not applied: revoking
    keeps the record's nationality, caveats and expiry as they are."""

    where: str
    user_id: str
    nationality: str
    grants: tuple[GrantRecord, ...]
    caveats: frozenset[str]
    expires: date | None
    revoked: bool


@dataclass(frozen=True, slots=True)
class ClearanceChange:
    """What importing does (or did) to one person; `fields` names what differs."""

    user_id: str
    kind: ChangeKind
    fields: tuple[str, ...] = ()
    missing: bool = False  # revoked because the file leaves the person out


class ImportRefused(StoreError):
    """Rows the register cannot take as they are (one line each, naming row and field);
    nothing was changed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)
