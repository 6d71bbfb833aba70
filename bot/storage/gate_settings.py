"""The settings the homeserver gate reads from the register instead of homeserver.yaml.

The gate runs inside Synapse and needs a few things from the bot's config: who the bot's
admins are and which room is its admin room (admins may enter it without a clearance), the
site's extra caveats (they decide how a room's label reads), and, to catch a bot and a gate
upgraded separately, the bot's version and the schema revision it runs. Copied into
homeserver.yaml they drifted whenever the bot's config changed; so the running bot publishes
them here at every start (`publish_gate_settings`), and the gate reads them
(`read_gate_settings`) through its read-only engine.

The row is signed with the register key, like clearance and room rows: an attacker with
write access to the database must not be able to make themselves an admin or move the admin
room. A row that does not verify is read as no row at all (the caller says so in its log).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, select, text

from bot.storage.models import GateSettingsRow
from bot.storage.records import RegisterSigner, RegisterVerifier, StoreError
from bot.storage.store import Store, append_audit

log = logging.getLogger(__name__)

GATE_SETTINGS_PUBLISHED = "gate.settings"  # the audit action of a changed row


@dataclass(frozen=True, slots=True)
class GateSettings:
    """One bot's published settings (admins and caveats sorted, so equal configs compare
    equal and sign alike)."""

    bot_user_id: str
    admins: tuple[str, ...]
    admin_room: str | None
    caveats: tuple[str, ...]
    bot_version: str
    schema_revision: str

    @classmethod
    def of(
        cls,
        bot_user_id: str,
        admins: list[str] | tuple[str, ...],
        admin_room: str | None,
        caveats: list[str] | tuple[str, ...],
        bot_version: str,
        schema_revision: str,
    ) -> GateSettings:
        return cls(
            bot_user_id,
            tuple(sorted(set(admins))),
            admin_room or None,
            tuple(sorted(set(caveats))),
            bot_version,
            schema_revision,
        )


def gate_settings_payload(settings: GateSettings) -> bytes:
    """What the row's signature covers: every field (the admins and admin room decide who
    enters the admin room, the caveats how labels read, the versions what the gate warns)."""
    body = {
        "row": "gate_settings",
        "bot_user_id": settings.bot_user_id,
        "admins": sorted(settings.admins),
        "admin_room": settings.admin_room,
        "caveats": sorted(settings.caveats),
        "bot_version": settings.bot_version,
        "schema_revision": settings.schema_revision,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _settings_of(row: GateSettingsRow | Row[Any]) -> GateSettings:
    """The settings an ORM row (the bot's writes) or a Core row (the gate's reads) holds."""
    return GateSettings.of(
        row.bot_user_id,
        list(row.admins or ()),
        row.admin_room,
        list(row.caveats or ()),
        row.bot_version,
        row.schema_revision,
    )


def publish_gate_settings(store: Store, settings: GateSettings) -> bool:
    """Write the bot's row, signed; audited (`gate.settings`) when it changes. Returns
    whether it changed. Needs the store's data key: an unsigned row would be ignored by a
    gate that verifies, so none is written."""
    signer = store.register_signer
    if signer is None:
        raise StoreError("publishing the gate's settings needs the data key (to sign them)")
    signature = signer.sign(gate_settings_payload(settings))
    with store.session() as session:
        row = session.get(GateSettingsRow, settings.bot_user_id)
        before = _settings_of(row) if row is not None else None
        verified = row is not None and signer.verifies(
            gate_settings_payload(_settings_of(row)), row.signature
        )
        if row is None:
            row = GateSettingsRow(bot_user_id=settings.bot_user_id)
            session.add(row)
        row.admins = list(settings.admins)
        row.admin_room = settings.admin_room
        row.caveats = list(settings.caveats)
        row.bot_version = settings.bot_version
        row.schema_revision = settings.schema_revision
        row.published_at = datetime.now(UTC)
        row.signature = signature
        changed = before != settings or not verified
        if changed:
            append_audit(
                session,
                "liaison-bot",
                GATE_SETTINGS_PUBLISHED,
                settings.bot_user_id,
                {
                    "admins": list(settings.admins),
                    "admin_room": settings.admin_room,
                    "caveats": list(settings.caveats),
                    "bot_version": settings.bot_version,
                    "schema_revision": settings.schema_revision,
                    # a row that was there but did not verify (altered, or signed with
                    # another key) is replaced: say so
                    "replaced_unverified": before is not None and not verified,
                },
            )
    return changed


def resign_gate_settings(store: Store, old: RegisterSigner, new: RegisterSigner) -> tuple[int, int]:
    """For a rotation of the data key (`bot.storage.rotate.resign_register` does the same for
    clearance and room rows): sign every settings row that verifies under the old key again
    under the new one, so the gate, given the new register_key, reads it at once. A row that
    verifies under neither stays as it is (refused; the bot's next start replaces it).
    Returns (rows signed, rows left refused)."""
    signed = refused = 0
    with store.session() as session:
        for row in session.scalars(select(GateSettingsRow).order_by(GateSettingsRow.bot_user_id)):
            payload = gate_settings_payload(_settings_of(row))
            if new.verifies(payload, row.signature):
                continue
            if old.verifies(payload, row.signature):
                row.signature = new.sign(payload)
                signed += 1
            else:
                refused += 1
    return signed, refused


class SettingsRefused(LookupError):
    """The bot's row is there but does not verify; the message names it."""


def read_gate_settings(
    conn: Connection, bot_user_id: str, verifier: RegisterVerifier | None
) -> GateSettings | None:
    """The bot's published row, None when there is none; SettingsRefused when it does not
    verify with `verifier` (None: read as stored, for a gate given no register key)."""
    table = GateSettingsRow.__table__
    row = conn.execute(select(table).where(table.c.bot_user_id == bot_user_id)).first()
    if row is None:
        return None
    settings = _settings_of(row)
    if verifier is not None and not verifier.verifies(
        gate_settings_payload(settings), row.signature
    ):
        raise SettingsRefused(
            f"the gate settings row of {bot_user_id} does not verify (altered in the database?)"
        )
    return settings


def read_schema_revision(conn: Connection) -> str | None:
    """The database's Alembic revision (None: never migrated), read without Alembic."""
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def revision_number(revision: str) -> int | None:
    """A revision's order: revisions are numbered ("0016"); None for any other name (one
    this code cannot place, so it cannot know whether it is older or newer)."""
    return int(revision) if revision.isascii() and revision.isdigit() else None


__all__ = [
    "GATE_SETTINGS_PUBLISHED",
    "GateSettings",
    "SettingsRefused",
    "gate_settings_payload",
    "publish_gate_settings",
    "read_gate_settings",
    "read_schema_revision",
    "resign_gate_settings",
    "revision_number",
]
