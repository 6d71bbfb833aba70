"""The clearance register: one implementation of grant / revoke / show / list, shared by the
chat commands and the offline CLI, so both validate and audit alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date

from bot.storage import ClearanceRecord, Store, StoreError
from commands.registry import USER_ID
from policy import (
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
