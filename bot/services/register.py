"""The clearance register: one implementation of grant / revoke / show / list, shared by the
chat commands and the offline CLI, so both validate and audit alike."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from bot.storage import ClearanceRecord, GrantRecord, Store, StoreError
from bot.storage.bulk import ClearanceChange, ImportRefused, WantedClearance
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
        if expires is not None:
            self.check_expiry(expires)
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

    # ------------------------------------------------------------ bulk (import / export)

    def wanted(self, rows: Sequence[tuple[str, Mapping[str, Any]]]) -> list[WantedClearance]:
        """The people a register file names, each row checked as `grant` checks its input
        (user id, levels, nationality, caveats, expiry) plus what only a file can get
        wrong (a field missing or unknown, one person twice, a revoked row with levels).
        `rows` are (where, fields) pairs, `where` naming the row in errors. Raises
        ImportRefused listing every bad row and field, so one run shows them all."""
        problems: list[str] = []
        wanted: list[WantedClearance] = []
        seen: dict[str, str] = {}
        for where, fields in rows:
            row_problems: list[str] = []

            def bad(name: str, why: str, where: str = where, out: list[str] = row_problems) -> None:
                out.append(f"{where}: {name}: {why}")

            unknown = sorted(set(fields) - set(REGISTER_FIELDS))
            for name in unknown:
                bad(name, f"unknown field (fields: {', '.join(REGISTER_FIELDS)})")
            for name in ("user_id", "nationality", "levels"):
                if name not in fields:
                    bad(name, "missing")
            user_id = _text(fields.get("user_id"))
            if "user_id" in fields and not USER_ID.match(user_id):
                bad("user_id", f"{user_id!r} is not a Matrix user id like @name:server")
            elif user_id and user_id in seen:
                bad("user_id", f"{user_id} is also on {seen[user_id]}: one row per person")
            else:
                seen[user_id] = where
            nationality = _text(fields.get("nationality")).upper()
            if "nationality" in fields and nationality not in current().countries:
                bad(
                    "nationality",
                    f"{fields['nationality']!r} is not an ISO 3166-1 alpha-3 code (e.g. DEU)",
                )
            grants: dict[str, GrantRecord] = {}
            for text in _list(fields.get("levels")):
                try:
                    level = self.level(text)
                except RegisterError as exc:
                    bad("levels", str(exc).removeprefix("LEVEL: "))
                    continue
                if level.scheme in grants:
                    bad(
                        "levels",
                        f"two levels in scheme {level.scheme} "
                        f"({grants[level.scheme].level}, {level.banner}); one per scheme",
                    )
                grants[level.scheme] = GrantRecord(level.scheme, level.banner, level.rank)
            caveats = set()
            for word in _list(fields.get("caveats")):
                upper = word.strip().upper()
                if upper not in self.caveats:
                    bad("caveats", f"unknown caveat {word!r} (known: {', '.join(self.caveats)})")
                caveats.add(upper)
            expires: date | None = None
            if expires_text := _text(fields.get("expires")):
                try:
                    expires = date.fromisoformat(expires_text)
                except ValueError:
                    bad("expires", f"{expires_text!r} is not a date in the form YYYY-MM-DD")
            revoked = _flag(fields.get("revoked"))
            if revoked is None:
                bad("revoked", f"{fields.get('revoked')!r} is not yes/no (or true/false)")
            elif revoked and grants:
                bad("levels", "a revoked row lists levels: leave them out, or revoked = no")
            problems.extend(row_problems)
            if not row_problems:
                wanted.append(
                    WantedClearance(
                        where,
                        user_id,
                        nationality,
                        tuple(sorted(grants.values(), key=lambda g: (-g.rank, g.scheme))),
                        frozenset(caveats),
                        expires,
                        bool(revoked),
                    )
                )
        if problems:
            # Ask the register about the rows that parsed too, so that one run names every
            # bad row (a past expiry, a row changed outside the bot), then refuse them all.
            try:
                self.store.import_clearances("", wanted, today=_today(), dry_run=True)
            except ImportRefused as exc:
                problems.extend(exc.problems)
            raise ImportRefused(problems)
        return wanted

    def apply(
        self,
        actor: str,
        wanted: Sequence[WantedClearance],
        *,
        revoke_missing: bool = False,
        dry_run: bool = False,
    ) -> list[ClearanceChange]:
        """Bring the register to `wanted` in one transaction (`Store.import_clearances`)."""
        return self.store.import_clearances(
            actor, wanted, today=_today(), revoke_missing=revoke_missing, dry_run=dry_run
        )

    # ------------------------------------------------------------ validation

    @staticmethod
    def check_expiry(expires: date, today: date | None = None) -> None:
        """A new expiry must not be before today (UTC): a grant that was over before it
        was made is a typo, not a clearance, and used to be shown as "active"."""
        today = today or _today()
        if expires < today:
            raise RegisterError(
                f"expires {expires.isoformat()} is in the past (today is {today.isoformat()}, "
                "UTC): give the last valid day"
            )

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


# The fields of a register file (`clearance export`, `clearance import`), in this order.
REGISTER_FIELDS = ("user_id", "nationality", "levels", "caveats", "expires", "revoked")


def register_rows(records: Iterable[ClearanceRecord]) -> list[dict[str, Any]]:
    """The register as a file holds it: per person what `clearance grant` takes (levels,
    nationality, caveats, expiry) and whether the record is revoked."""
    return [
        {
            "user_id": r.user_id,
            "nationality": r.nationality,
            "levels": [g.level for g in r.grants],
            "caveats": sorted(r.caveats),
            "expires": r.expires.isoformat() if r.expires else None,
            "revoked": r.revoked_at is not None,
        }
        for r in records
    ]


def _today() -> date:
    return datetime.now(UTC).date()


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _list(value: Any) -> list[str]:
    """A list field: a JSON list, or a CSV cell with entries separated by ';'."""
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(";")
    return [text for item in items if (text := str(item).strip())]


def _flag(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().casefold()
    if text in ("", "no", "false", "0"):
        return False
    if text in ("yes", "true", "1"):
        return True
    return None
