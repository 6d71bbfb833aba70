"""The clearance register: one implementation of grant / revoke / show / list, shared by the
chat commands and the offline CLI, so both validate and audit alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date

from bot.storage import ClearanceRecord, GrantRecord, Store, StoreError
from commands.registry import USER_ID
from policy import (
    Clearance,
    Level,
    MarkingError,
    current,
    known_caveats,
    parse_marking,
)


class RegisterError(Exception):
    """Bad input or an impossible change; the message is for the person who asked."""


class ClearanceRegister:
    def __init__(self, store: Store, extra_caveats: Iterable[str] = ()) -> None:
        self.store = store
        self.caveats = known_caveats(extra_caveats)

    def grant(
        self,
        actor: str,
        user_id: str,
        level_text: str,
        *,
        nationality: str | None = None,
        expires: date | None = None,
        caveats: Sequence[str] = (),
    ) -> ClearanceRecord:
        user_id = self._user(user_id)
        level = self.level(level_text)
        nation = self._nationality(nationality) if nationality is not None else None
        words = self._caveats(caveats)
        try:
            return self.store.grant(
                actor,
                user_id,
                level.scheme,
                level.banner,
                level.rank,
                nationality=nation,
                expires=expires,
                caveats=words,
            )
        except StoreError as exc:
            raise RegisterError(str(exc)) from None

    def revoke(self, actor: str, user_id: str, scope: str | None = None) -> ClearanceRecord:
        """`scope` None or "all" revokes everything; otherwise a scheme code or a level."""
        user_id = self._user(user_id)
        scheme = None if scope is None or scope.strip().casefold() == "all" else self._scheme(scope)
        try:
            return self.store.revoke(actor, user_id, scheme)
        except StoreError as exc:
            raise RegisterError(str(exc)) from None

    def show(self, user_id: str) -> ClearanceRecord | None:
        return self.store.clearance(self._user(user_id))

    def records(self) -> list[ClearanceRecord]:
        return self.store.clearances()

    # ------------------------------------------------------------ validation

    def level(self, text: str) -> Level:
        try:
            label = parse_marking(text)
        except MarkingError as exc:
            raise RegisterError(f"LEVEL: {exc}") from None
        if label.caveats or label.rel_to:
            raise RegisterError(
                f"LEVEL: {text!r} has qualifiers; a grant is a level only (use --caveat)"
            )
        if label.level.legacy:
            raise RegisterError(
                f"LEVEL: {label.level.banner} is a legacy level; grant a current one"
            )
        return label.level

    def _scheme(self, scope: str) -> str:
        scheme = current().scheme(scope)
        if scheme is not None:
            return scheme.code
        try:
            return parse_marking(scope).scheme
        except MarkingError as exc:
            raise RegisterError(
                f"{scope!r} is neither 'all', a scheme (NATO, EU, DEU…) nor a level: {exc}"
            ) from None

    @staticmethod
    def _user(user_id: str) -> str:
        if not USER_ID.match(user_id or ""):
            raise RegisterError(f"{user_id!r} is not a Matrix user id like @name:server")
        return user_id

    @staticmethod
    def _nationality(code: str) -> str:
        upper = code.strip().upper()
        if upper not in current().countries:
            raise RegisterError(
                f"nationality {code!r} is not an ISO 3166-1 alpha-3 code (e.g. DEU, FRA)"
            )
        return upper

    def _caveats(self, words: Sequence[str]) -> list[str]:
        out = []
        for word in words:
            upper = word.strip().upper()
            if upper not in self.caveats:
                raise RegisterError(f"unknown caveat {word!r} (known: {', '.join(self.caveats)})")
            out.append(upper)
        return out


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
