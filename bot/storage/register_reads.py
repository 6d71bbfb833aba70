"""Reading the clearance register as the pure rules see it, with the schemes in force: shared
by the bot's services and the homeserver gate (which runs inside Synapse and so takes nothing
from the services). A grant stored at a rank the schemes in force no longer give it is not
used: never a clearance silently raised or lowered."""

from __future__ import annotations

from bot.storage.records import ClearanceRecord, GrantRecord
from policy import Clearance, Level, current


def grant_mismatch(grant: GrantRecord) -> str | None:
    """None when a stored grant is the level the schemes in force name so, at the rank it
    was granted at; otherwise why not. A site schemes file that redefines a scheme must not
    raise or lower clearances already granted in it: such a grant is granted again."""
    scheme = current().schemes.get(grant.scheme)
    level = next((lv for lv in scheme.levels if lv.banner == grant.level), None) if scheme else None
    if level is not None and level.rank == grant.rank:
        return None
    now = (
        f"the schemes in force put {grant.level} at rank {level.rank}"
        if level is not None
        else f"the schemes in force have no level {grant.level}"
    )
    redefined = (
        " (redefined by the site schemes file)" if grant.scheme in current().overrides else ""
    )
    return (
        f"grant {grant.level} on record at rank {grant.rank}, but {now}{redefined}: "
        "not used until it is granted again"
    )


def clearance_mismatches(record: ClearanceRecord) -> list[str]:
    """Why a record's grants do not hold in the schemes in force (empty: they all do)."""
    return [why for grant in record.grants if (why := grant_mismatch(grant)) is not None]


def policy_clearance(record: ClearanceRecord) -> Clearance:
    """The register's record as the pure rules see it. A grant the schemes in force read at
    another rank, or not at all, makes the whole record unusable (every decision on it is a
    denial naming the grant): never a clearance silently raised or lowered."""
    grants: dict[str, Level] = {}
    unusable: list[str] = []
    for grant in record.grants:
        why = grant_mismatch(grant)
        if why is not None:
            unusable.append(f"clearance of {record.user_id}: {why}")
            continue
        scheme = current().schemes[grant.scheme]
        grants[grant.scheme] = next(lv for lv in scheme.levels if lv.banner == grant.level)
    return Clearance(
        user_id=record.user_id,
        nationality=record.nationality,
        grants=grants,
        caveats=record.caveats,
        expires=record.expires,
        revoked=record.revoked_at is not None,
        unusable=tuple(unusable),
    )
