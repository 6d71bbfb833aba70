"""The `liaison-bot` command line.

Exit codes everywhere: 0 success, 1 a negative answer or failed check (denied, not found,
audit log broken), 2 bad input or usage, or no answer could be given (the database missing
or at another schema revision, an audit log that cannot be verified without the right key).
Answers go to stdout (JSON for the policy commands, and with --json for the listings, so
scripts can read them); errors go to stderr and name the offending input.

Only `db upgrade` creates or migrates the database; every other command opens it as it is,
and a command that only reads opens it read-only (`bot/storage/offline.py`).
"""

from __future__ import annotations

import asyncio
import errno
import getpass
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from bot.config import Config, ConfigError, load_config
from bot.services.register import ClearanceRegister, RegisterError
from bot.startup import read_data_key, read_pickle_key
from bot.storage import ClearanceRecord, Store, StoreError, audit_key_from
from bot.storage.runlock import RunLock
from bot.storage.sealing import Sealer, SealError
from bot.storage.sealing import resealed as _moved
from commands.views import clearance_document
from policy import (
    Clearance,
    Decision,
    Label,
    Level,
    MarkingError,
    Room,
    current,
    equivalent,
    known_caveats,
    make_room,
    may_join,
    may_release,
    parse_audience,
    parse_marking,
    releasable_set,
    render,
)

EXIT_OK, EXIT_NO, EXIT_BAD = 0, 1, 2


def _fail(message: str, code: int = EXIT_BAD) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _emit(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, ensure_ascii=False, indent=2))


def _marking(text: str, option: str, context: str | None = None) -> Label:
    try:
        return parse_marking(text, context)
    except MarkingError as exc:
        _fail(f"{option}: {exc}")


def _scheme(code: str, option: str) -> str:
    scheme = current().scheme(code)
    if scheme is None:
        known = ", ".join(sorted(current().schemes))
        _fail(f"{option}: unknown scheme {code!r} (known: {known})")
    return scheme.code


def _use_schemes(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--schemes FILE`: install the site schemes file before any other option is read."""
    if value is not None:
        from bot.schemes import SchemesFileError, use_schemes_file

        try:
            use_schemes_file(value)
        except SchemesFileError as exc:
            _fail(f"--schemes: {exc}")
    return value


schemes_option = click.option(
    "--schemes",
    "schemes_file",
    type=click.Path(dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=_use_schemes,
    help="A site schemes file adding or overriding national schemes ([bot] schemes_file).",
)


def _audience(text: str | None, option: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    tokens = [t.strip() for t in text.split(",")]
    if not all(tokens):
        _fail(f"{option}: empty entry in {text!r}")
    try:
        return tuple(parse_audience(tokens))
    except MarkingError as exc:
        _fail(f"{option}: {exc}")


def _room(label_text: str, audience_text: str | None, label_opt: str, audience_opt: str) -> Room:
    label = _marking(label_text, label_opt)
    try:
        return make_room(label, _audience(audience_text, audience_opt))
    except MarkingError as exc:
        _fail(f"{audience_opt}: {exc}")


def label_json(label: Label) -> dict[str, Any]:
    return {
        "scheme": label.scheme,
        "level": label.level.banner,
        "rank": label.rank,
        "caveats": sorted(label.caveats),
        "rel_to": sorted(label.rel_to),
        "releasable_to": sorted(releasable_set(label)),
        "banner": render(label),
    }


def _decision(decision: Decision, *, spillage: bool = False) -> NoReturn:
    payload: dict[str, Any] = {"allowed": decision.allowed, "reason": decision.reason}
    if spillage:
        payload["spillage"] = decision.spillage
    _emit(payload)
    sys.exit(EXIT_OK if decision.allowed else EXIT_NO)


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            click.echo(f"error: {line}", err=True)
        sys.exit(EXIT_BAD)


class _Main(click.Group):
    """Refusals of the store (a keyed audit log without the data key, say) and of a secret
    (a key file others can read) end as one line naming what to fix, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from bot.startup import StartupError  # a key file that cannot be used, say

        try:
            return super().invoke(ctx)
        except (StoreError, StartupError) as exc:
            _fail(str(exc))


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="liaison-bot")
def main() -> None:
    """liaison-bot: relay classified intelligence between national, NATO and EU Matrix rooms
    under clearance and releasability rules.

    \b
    Examples:
      liaison-bot label parse "nato secret//rel to eu"
      liaison-bot check-config --config config.toml
      liaison-bot db upgrade --config config.toml

    \b
    Exit codes: 0 success; 1 a negative answer or failed check (denied, not
    found, audit log broken); 2 bad input or usage, or no answer possible (the
    database missing or at another schema revision: only `db upgrade` creates
    and migrates it; an audit log that cannot be verified without the right key).
    """


# ---------------------------------------------------------------- label


@main.group()
def label() -> None:
    """Read, explain and convert markings."""


@label.command("parse")
@click.argument("marking")
@schemes_option
@click.option(
    "--scheme", "scheme", help="Room scheme giving context to short names (NATO, EU, DEU…)."
)
def label_parse(marking: str, scheme: str | None) -> None:
    """Print the normalised label of MARKING as JSON.

    \b
    Example:
      liaison-bot label parse "DEU GEHEIM // REL TO NATO"
      liaison-bot label parse SECRET --scheme NATO
    """
    context = _scheme(scheme, "--scheme") if scheme else None
    _emit(label_json(_marking(marking, "MARKING", context)))


@label.command("convert")
@click.argument("marking")
@schemes_option
@click.option("--to", "to", required=True, help="Target scheme (NATO, EU or a nation's trigraph).")
@click.option("--scheme", "scheme", help="Context scheme for short names in MARKING.")
def label_convert(marking: str, to: str, scheme: str | None) -> None:
    """Print the equivalent level of MARKING in scheme TO: the level of the same rank. Where
    TO has none (no RESTRICTED, say), exit 1 with the reason: it never rounds.

    \b
    Example:
      liaison-bot label convert "NATO SECRET" --to ESP      # ESP RESERVADO
    """
    context = _scheme(scheme, "--scheme") if scheme else None
    parsed = _marking(marking, "MARKING", context)
    target = _scheme(to, "--to")
    found = equivalent(parsed, target)
    if isinstance(found, str):
        _fail(found, EXIT_NO)
    click.echo(found.banner)


@label.command("schemes")
@click.argument("code", required=False)
@schemes_option
def label_schemes(code: str | None) -> None:
    """List every scheme (or the one CODE names): its levels (official names, other accepted
    forms), the NATO and EU equivalent of each (same rank) or why there is none, its sources.

    \b
    Example:
      liaison-bot label schemes
      liaison-bot label schemes DEU --schemes /etc/liaison/site-schemes.toml
    """
    from policy.labels import scheme_rows

    catalogue = current()
    codes = [_scheme(code, "CODE")] if code else sorted(catalogue.schemes, key=_scheme_order)
    for i, name in enumerate(codes):
        scheme = catalogue.schemes[name]
        if i:
            click.echo()
        site = " (site file)" if name in catalogue.overrides + catalogue.additions else ""
        click.echo(f"{scheme.code} — {scheme.name}{site}")
        for row in scheme_rows(scheme.code):
            if row.level is None:
                click.echo(f"  rank {row.rank}: no {scheme.code} level — {row.missing}")
                continue
            legacy = " [legacy: read, never produced]" if row.level.legacy else ""
            click.echo(f"  rank {row.rank}: {row.level.banner}{legacy}")
            if row.aliases:
                click.echo(f"    also: {', '.join(row.aliases)}")
            click.echo(f"    NATO: {_equivalent_text(row.nato)}")
            click.echo(f"    EU: {_equivalent_text(row.eu)}")
        click.echo(f"  sources: {'; '.join(scheme.sources) or 'none given'}")


def _scheme_order(code: str) -> tuple[int, str]:
    return (0 if code == "NATO" else 1 if code == "EU" else 2, code)


def _equivalent_text(found: Level | str) -> str:
    return found.banner if isinstance(found, Level) else f"none: {found}"


@label.command("export")
@click.argument("marking")
@schemes_option
@click.option("--scheme", "scheme", help="Context scheme for short names in MARKING.")
@click.option(
    "--format", "fmt", type=click.Choice(["xml", "json"]), default="xml", show_default=True
)
@click.option(
    "--alternative",
    "alternatives",
    multiple=True,
    help="Also give the equivalent label in this scheme (repeatable).",
)
def label_export(marking: str, scheme: str | None, fmt: str, alternatives: tuple[str, ...]) -> None:
    """Print MARKING as a NATO ADatP-4774 confidentiality label (XML or its JSON form).

    \b
    Example:
      liaison-bot label export "DEU GEHEIM // REL TO NATO" --alternative NATO
      liaison-bot label export "NATO SECRET // ATOMAL" --format json
    """
    from policy.adatp4774 import label_metadata, to_json, to_xml

    context = _scheme(scheme, "--scheme") if scheme else None
    parsed = _marking(marking, "MARKING", context)
    schemes = [_scheme(code, "--alternative") for code in alternatives]
    for code in schemes:
        if code != parsed.scheme and isinstance(reason := equivalent(parsed, code), str):
            _fail(f"--alternative: {reason}")
    meta = label_metadata(parsed, schemes, created=datetime.now(UTC))
    if fmt == "json":
        _emit(to_json(meta))
    else:
        click.echo(to_xml(meta))


@label.command("import")
@click.argument("source", type=click.File("r", encoding="utf-8"))
@schemes_option
def label_import(source: Any) -> None:
    """Read an ADatP-4774 label (XML, or the JSON form) from SOURCE (a file, or - for
    standard input) and print our label as `label parse` does; exit 2 naming the element or
    value it cannot represent (nothing is dropped in silence).

    \b
    Example:
      liaison-bot label import label.xml
      liaison-bot label export "NATO SECRET" | liaison-bot label import -
    """
    from policy.adatp4774 import MAX_LABEL_BYTES, import_label

    text = source.read(MAX_LABEL_BYTES * 4 + 1)
    try:
        parsed = import_label(text)
    except MarkingError as exc:
        _fail(f"{getattr(source, 'name', 'SOURCE')}: {exc}")
    _emit(label_json(parsed))


# ---------------------------------------------------------------- policy


@main.command("init")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing file at PATH.")
def init_command(config_path: str, force: bool) -> None:
    """Write the commented example config to PATH (mode 0640), then say what to do next.

    Missing parent folders are created (mode 0750). An existing file is never replaced
    without --force: it is named and the exit code is 2.

    \b
    Example:
      liaison-bot init --config /etc/liaison-bot/config.toml
    """
    from bot.initconfig import InitError, next_steps, write_example_config

    try:
        written = write_example_config(Path(config_path), force=force)
    except InitError as exc:
        _fail(f"--config: {exc}")
    click.echo(next_steps(written))


@main.group()
def policy() -> None:
    """Ask the access rules directly: may-join, may-release."""


def _grants(texts: Sequence[str]) -> dict[str, Level]:
    grants: dict[str, Level] = {}
    for text in texts:
        grant = _marking(text, "--grant")
        if grant.caveats or grant.rel_to:
            _fail(f"--grant: {text!r} is a marking with qualifiers; a grant is a level only")
        if grant.scheme in grants:
            _fail(
                f"--grant: two grants in scheme {grant.scheme} "
                f"({grants[grant.scheme].banner}, {grant.level.banner}); give one per scheme"
            )
        grants[grant.scheme] = grant.level
    return grants


def _caveats(words: Iterable[str], option: str) -> frozenset[str]:
    known = known_caveats()
    out = set()
    for word in words:
        upper = word.strip().upper()
        if upper not in known:
            _fail(f"{option}: unknown caveat {word!r} (known: {', '.join(known)})")
        out.add(upper)
    return frozenset(out)


def _nationality(code: str) -> str:
    upper = code.strip().upper()
    if upper not in current().countries:
        _fail(f"--nationality: {code!r} is not an ISO 3166-1 alpha-3 code (e.g. DEU, FRA)")
    return upper


def parse_date(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        _fail(f"{option}: {text!r} is not a date in the form YYYY-MM-DD")


@policy.command("may-join")
@click.option("--nationality", required=True, help="The person's nationality (trigraph).")
@click.option(
    "--grant", "grants", multiple=True, help='A granted level, e.g. "NATO SECRET"; repeat.'
)
@click.option("--caveat", "caveats", multiple=True, help="A caveat briefing held; repeat.")
@click.option("--expires", help="Last valid day, YYYY-MM-DD (UTC).")
@click.option("--revoked", is_flag=True, help="The clearance is revoked.")
@click.option("--room-label", required=True, help="The room's marking.")
@click.option("--audience", help="The room's narrowed audience, comma separated.")
@schemes_option
def policy_may_join(
    nationality: str,
    grants: tuple[str, ...],
    caveats: tuple[str, ...],
    expires: str | None,
    revoked: bool,
    room_label: str,
    audience: str | None,
) -> None:
    """May a person with this clearance join a room with this label? Exit 0 yes, 1 no.

    \b
    Example:
      liaison-bot policy may-join --nationality DEU --grant "NATO SECRET" \\
          --room-label "NATO SECRET"
    """
    clearance = Clearance(
        user_id="the user",
        nationality=_nationality(nationality),
        grants=_grants(grants),
        caveats=_caveats(caveats, "--caveat"),
        expires=parse_date(expires, "--expires") if expires else None,
        revoked=revoked,
    )
    room = _room(room_label, audience, "--room-label", "--audience")
    _decision(may_join(clearance, room, datetime.now(UTC).date()))


@policy.command("may-release")
@click.option("--label", "label_text", required=True, help="The message's marking.")
@click.option("--from-label", required=True, help="The source room's marking.")
@click.option("--to-label", required=True, help="The target room's marking.")
@click.option("--from-audience", help="The source room's narrowed audience, comma separated.")
@click.option("--to-audience", help="The target room's narrowed audience, comma separated.")
@schemes_option
def policy_may_release(
    label_text: str,
    from_label: str,
    to_label: str,
    from_audience: str | None,
    to_audience: str | None,
) -> None:
    """May a message with LABEL go from one room to another? Exit 0 yes, 1 no.

    The message label is read with the source room's scheme as context.

    \b
    Example:
      liaison-bot policy may-release --label "GEHEIM // REL TO NATO" \\
          --from-label "DEU GEHEIM" --to-label "NATO SECRET"
    """
    source = _room(from_label, from_audience, "--from-label", "--from-audience")
    target = _room(to_label, to_audience, "--to-label", "--to-audience")
    message = _marking(label_text, "--label", source.scheme)
    _decision(may_release(message, source, target), spillage=True)


# ---------------------------------------------------------------- config and database


@main.command("check-config")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--without-secrets",
    is_flag=True,
    help="Check the file only, not the secrets it names (where they are not given, e.g. a "
    "CI job checking a config before it is deployed).",
)
def check_config(config_path: str, without_secrets: bool) -> None:
    """Validate a config file and its secrets as `run` does: exit 0, or 2 listing every
    error with its key path (a missing secret, a short key, a secret file that cannot be
    read or that others can read, one variable or file for two secrets).

    \b
    Example:
      liaison-bot check-config --config config.toml
      liaison-bot check-config --config config.toml --without-secrets
    """
    from bot.startup import SecretError, Secrets

    config = _load(config_path)
    if not without_secrets:
        try:
            Secrets.from_env_or_files(config)
        except SecretError as exc:
            for problem in exc.problems:
                click.echo(f"error: {problem}", err=True)
            sys.exit(EXIT_BAD)
    rooms = ", ".join(f"{r.key} ({r.parsed_label.banner})" for r in config.rooms) or "none"
    click.echo(
        f"{config_path}: OK — rooms: {rooms}; {len(config.routes)} route(s), "
        f"{len(config.digests)} digest(s)"
        + ("; secrets not checked" if without_secrets else "; secrets readable")
    )


@main.group()
def gate() -> None:
    """The homeserver gate: Synapse itself refuses what the bot would refuse."""


@gate.command("synapse-config")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--database",
    "database",
    help="The URL the gate reads the register with (a role with SELECT only); "
    "default: the bot's own database_url.",
)
def gate_synapse_config(config_path: str, database: str | None) -> None:
    """Print the `modules:` entry to add to Synapse's homeserver.yaml.

    Three keys: the bot's user id, the database URL (without its password: a password
    goes in the file database_password_file names, read by Synapse's user only) and, with
    the data key readable (storage.data_key_env or data_key_file), the register's public
    key (register_key), so the gate refuses register rows that do not verify. The bot's
    admins, admin room and caveats are not copied: the bot publishes them into the
    register at every start, and the gate reads them there (docs/gate.md).

    \b
    Example:
      LIAISON_DATA_KEY=… liaison-bot gate synapse-config --config config.toml \\
        --database postgresql+psycopg://liaison_gate@db/liaison
    """
    import yaml

    from bot.gate.config import (
        PASSWORD_FILE_HINT,
        GateConfigError,
        module_entry,
        package_version,
        register_entry,
    )

    config = _load(config_path)
    # Only the public key derived from the data key is printed, never the data key.
    data_key = read_data_key(config)
    try:
        entry = register_entry(config, database, data_key=data_key)
    except GateConfigError as exc:
        _fail(f"--database: {exc}")
    if not data_key:
        where = config.storage.data_key_file or config.storage.data_key_env
        click.echo(
            f"warning: the data key ({where}) is not readable, so no register_key is "
            "printed: without it the gate does not verify register rows (nor the settings "
            "the bot publishes), and anyone who can write the database can grant "
            "clearances. Run again where the bot's data key is readable.",
            err=True,
        )
    if database is None and not entry["database"].startswith("sqlite"):
        click.echo(
            "warning: this is the bot's own database login; the gate needs SELECT only: "
            "pass --database with a read-only role (docs/gate.md)",
            err=True,
        )
    click.echo("# Add to homeserver.yaml (merge into an existing modules: list), restart Synapse.")
    if data_key:
        click.echo(
            "# register_key: rows that do not verify with it admit nobody. Set it once the bot "
            "has\n# started on this version: it signs the rows stored before then at that start."
        )
    if "database_password_file" in entry:
        click.echo(
            "# The database password is not printed: write it alone into "
            f"{PASSWORD_FILE_HINT}\n# (or a path of your choice), readable by Synapse's user "
            "only (chmod 0400)."
        )
    click.echo(
        "# Synapse's environment needs the bot's own version (docs/gate.md):\n"
        f"#   pip install 'liaison-bot[gate]=={package_version()}'"
    )
    schemes = config.schemes_path()
    modules = [module_entry([entry], str(schemes) if schemes else None)]
    click.echo(yaml.safe_dump({"modules": modules}, sort_keys=False), nl=False)


@main.group()
def db() -> None:
    """The bot's database."""


@db.command("upgrade")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
def db_upgrade(config_path: str) -> None:
    """Create or migrate the database named in the config to the newest schema: the only
    command that does (the others refuse a missing or out-of-date database). Stop the bot
    and back up first: an older bot must not run on the migrated database.

    \b
    Example:
      liaison-bot db upgrade --config config.toml
    """
    from bot.storage.migrate import upgrade  # Alembic is only needed here

    config = _load(config_path)
    url = config.database_url()
    # Alembic says each revision as it applies it: progress on a long upgrade.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("alembic.runtime.migration").setLevel(logging.INFO)
    try:
        revision = upgrade(url)
    except Exception as exc:  # report any driver error plainly; the traceback helps nobody here
        _fail(f"database upgrade failed for {_safe_url(url)}: {type(exc).__name__}: {exc}", 1)
    click.echo(f"database {_safe_url(url)} is at revision {revision}")


def _offline_store(config: Config, *, read_only: bool = False) -> Store:
    """The bot's database as it is: never created, never migrated (only `db upgrade` does
    that), read-only for a command that only reads. A missing database, or one at another
    schema revision, is refused naming it, its revision and the one this version needs."""
    from bot.storage.offline import DatabaseRefused, open_existing

    url = config.database_url()
    # The data key, when set, keys the audit rows the CLI writes and lets it verify a keyed
    # log; without it the CLI can still read, and a keyed log refuses its writes by name.
    data_key = read_data_key(config)
    try:
        return open_existing(
            url, audit_key_from(data_key) if data_key else None, read_only=read_only
        )
    except DatabaseRefused as exc:
        remedy = ""
        if exc.upgrade_helps:
            config_path = click.get_current_context().params.get("config_path") or "…"
            remedy = f": run `liaison-bot db upgrade --config {config_path}`"
        _fail(f"{exc}{remedy}")


def _key_source(config: Config, which: str) -> str:
    """Where the config says a key comes from, for an error that names it: the file when
    one is set (`*_file`), else the environment variable (`*_env`)."""
    if which == "data":
        path, env = config.storage.data_key_file, config.storage.data_key_env
        return f"storage.data_key_file {path}" if path else f"storage.data_key_env {env}"
    path, env = config.homeserver.pickle_key_file, config.homeserver.pickle_key_env
    return f"homeserver.pickle_key_file {path}" if path else f"homeserver.pickle_key_env {env}"


def _report_refused(store: Store) -> int:
    """Name the register rows a read left out because they do not verify (the running bot
    audits and alerts them; a read-only command cannot write, so it says so here). Returns
    the exit code the command ends with: a listing that left rows out is not a clean answer
    (EXIT_NO), so a script never takes "the register is empty" from a tampered one."""
    from bot.storage.offline import ReadOnlyStore

    if not isinstance(store, ReadOnlyStore) or not store.refused:
        return EXIT_OK
    for kind, name in store.refused:
        click.echo(
            f"warning: the {kind} row of {name} does not verify (changed outside the "
            "bot): left out",
            err=True,
        )
    return EXIT_NO


def _cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


# ---------------------------------------------------------------- run


@main.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (never message bodies).")
def run_command(config_path: str, verbose: bool) -> None:
    """Run the bot until SIGINT/SIGTERM. Refuses to start without its secrets (from the
    variables or files the config names), or while another process runs on its store.

    \b
    Example:
      LIAISON_PASSWORD=… LIAISON_PICKLE_KEY=… LIAISON_DATA_KEY=… \\
          liaison-bot run --config config.toml
    """
    from bot.initconfig import bot_runtime_missing  # before anything imports nio

    if (missing := bot_runtime_missing()) is not None:
        _fail(missing)
    from bot.logsetup import banner, configure_logging
    from bot.run import run_bot
    from bot.startup import Secrets, StartupError

    config = _load(config_path)
    try:
        configure_logging(config, verbose)
    except OSError as exc:
        _fail(f"logging.file: cannot open {config.log_file()}: {exc.strerror}", EXIT_NO)
    logging.getLogger("bot").info(banner(config, config_path))
    schemes = config.schemes_path()
    if schemes is not None:  # read with the config, before logging was set up
        from bot.schemes import announce_site_schemes

        announce_site_schemes(current(), schemes)
    try:
        secrets = Secrets.from_env_or_files(config)
        asyncio.run(run_bot(config, secrets))
    except StartupError as exc:
        _fail(str(exc), EXIT_NO)


@main.command("demo")
@click.option(
    "--exit-after-scenario",
    is_flag=True,
    help="Exit 0 when the scenario passed, 1 otherwise, instead of lingering.",
)
@click.option(
    "--federated",
    is_flag=True,
    help="Two homeservers federating over TLS: the officer on the German one, the NATO and "
    "EU analysts on NATO's.",
)
@click.option(
    "--siem",
    is_flag=True,
    help="Export the audit log to a local rsyslog over TLS ([siem]) and, after the scenario, "
    "check what it received (OCSF 1.5.0, no gaps, no duplicates). Needs rsyslog and "
    "rsyslog-openssl.",
)
def demo_command(exit_after_scenario: bool, federated: bool, siem: bool) -> None:
    """Start a throwaway Synapse, the bot, three rooms and sample people; play a short
    scenario (a structured slash command, an invite refused, a relay held until a second
    officer releases it to NATO and refused for the EU, a digest with its picture, saved
    decrypted where the demo says), then keep the homeserver up for a Matrix client until
    Ctrl-C. Needs the `demo` extra (Synapse).

    \b
    Example:
      liaison-bot demo
      liaison-bot demo --exit-after-scenario
      liaison-bot demo --federated
      liaison-bot demo --siem --exit-after-scenario
    """
    from bot.initconfig import bot_runtime_missing  # before anything imports nio

    if (missing := bot_runtime_missing()) is not None:
        _fail(missing)
    try:
        import synapse  # noqa: F401
    except ImportError:
        _fail("the demo needs Synapse: pip install 'liaison-bot[demo]' (make demo does this)")
    from bot.devtools.demo import run_demo, siem_missing

    if siem and (reason := siem_missing()) is not None:
        _fail(reason)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("nio", "peewee", "aiohttp", "bot"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    ok = run_demo(exit_after_scenario=exit_after_scenario, federated=federated, siem=siem)
    sys.exit(EXIT_OK if ok else EXIT_NO)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="One JSON document on stdout (docs/cli.md: shapes)."
)


@main.command("rooms")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@json_option
def rooms_command(config_path: str, as_json: bool) -> None:
    """Managed rooms (key, label banner, name) as the database and config know them.
    Reads the database read-only.

    \b
    Example:
      liaison-bot rooms --config config.toml
      liaison-bot rooms --config config.toml --json
    """
    from commands.services import RoomSummary
    from commands.views import rooms_document

    config = _load(config_path)
    store = _offline_store(config, read_only=True)
    try:
        stored = {r.key: r for r in store.rooms()}
    finally:
        store.close()
    code = _report_refused(store)
    summaries = []
    for room in config.rooms:
        record = stored.get(room.key)
        label = room.parsed_label
        summaries.append(
            RoomSummary(
                room.key,
                room.name,
                label.banner,
                label.rank,
                -1,
                record.room_id if record else None,
            )
        )
    if as_json:
        rooms = [
            {
                "key": r.key,
                "name": r.name,
                "label": r.banner,
                "rank": r.rank,
                "room_id": r.room_id,
                "created": r.room_id is not None,
            }
            for r in summaries
        ]
        _emit({"rooms": rooms})
        sys.exit(code)
    click.echo(rooms_document(summaries).plain)
    for summary in summaries:
        if summary.room_id is None:
            click.echo(f"  {summary.key}: not created yet (the bot creates it at its next start)")


@main.command("routes")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@json_option
def routes_command(config_path: str, as_json: bool) -> None:
    """Relay routes between managed rooms: the config's and those added from chat. Reads
    the database read-only.

    \b
    Example:
      liaison-bot routes --config config.toml
      liaison-bot routes --config config.toml --json
    """
    from commands.services import RouteSummary
    from commands.views import routes_document

    config = _load(config_path)
    routes = [RouteSummary(k, tuple(v)) for k, v in config.route_targets().items()]
    store = _offline_store(config, read_only=True)
    try:
        chat: dict[str, list[str]] = {}
        for source, target in store.chat_routes():
            chat.setdefault(source, []).append(target)
    finally:
        store.close()
    routes += [RouteSummary(k, tuple(v), "chat") for k, v in chat.items()]
    if as_json:
        _emit(
            {
                "routes": [
                    {"source": r.source, "targets": list(r.targets), "origin": r.origin}
                    for r in routes
                ]
            }
        )
        return
    click.echo(routes_document(routes).plain)


# ---------------------------------------------------------------- clearance (offline)


@main.group()
def clearance() -> None:
    """The clearance register, offline (the running bot applies changes within its sweep)."""


def _register(config_path: str, *, read_only: bool = False) -> tuple[ClearanceRegister, Store]:
    config = _load(config_path)
    store = _offline_store(config, read_only=read_only)
    return ClearanceRegister(store, config.bot.caveats), store


def clearance_json(record: ClearanceRecord) -> dict[str, Any]:
    """A clearance record for `--json`: what the text shows, with stable keys."""
    return {
        "user_id": record.user_id,
        "nationality": record.nationality,
        "grants": [{"scheme": g.scheme, "level": g.level, "rank": g.rank} for g in record.grants],
        "caveats": sorted(record.caveats),
        "expires": record.expires.isoformat() if record.expires else None,
        "revoked": record.revoked_at is not None,
        "revoked_at": record.revoked_at.isoformat(timespec="seconds")
        if record.revoked_at
        else None,
        "identity_key": record.identity_key,
        "identity_pending": record.identity_pending,
    }


@clearance.command("grant")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.argument("user")
@click.argument("level")
@click.option("--nationality", help="Trigraph; required on a first grant.")
@click.option("--expires", help="Last valid day, YYYY-MM-DD (UTC); today or later.")
@click.option("--caveat", "caveats", multiple=True, help="A caveat briefing held; repeat.")
def clearance_grant(
    config_path: str,
    user: str,
    level: str,
    nationality: str | None,
    expires: str | None,
    caveats: tuple[str, ...],
) -> None:
    """Set USER's grant in LEVEL's scheme (raise or lower). Writes the database (audited);
    an expiry before today (UTC) is refused.

    \b
    Example:
      liaison-bot clearance grant --config config.toml @lo-deu:example.org "NATO SECRET" \\
          --nationality DEU --expires 2027-06-30
    """
    expiry = parse_date(expires, "--expires") if expires else None
    if expiry is not None:
        try:
            ClearanceRegister.check_expiry(expiry)
        except RegisterError as exc:
            _fail(f"--expires: {exc}")
    register, store = _register(config_path)
    try:
        record = register.grant(
            _cli_actor(),
            user,
            level,
            nationality=nationality,
            expires=expiry,
            caveats=caveats,
        )
    except RegisterError as exc:
        _fail(str(exc))
    finally:
        store.close()
    click.echo(clearance_document(record).plain)


@clearance.command("revoke")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.argument("user")
@click.argument("scope", required=False, default="all")
def clearance_revoke(config_path: str, user: str, scope: str) -> None:
    """Revoke USER's grant in one scheme (a level or scheme name), or all (the default).
    Writes the database (audited).

    \b
    Example:
      liaison-bot clearance revoke --config config.toml @lo-deu:example.org all
    """
    register, store = _register(config_path)
    try:
        record = register.revoke(_cli_actor(), user, scope)
    except RegisterError as exc:
        _fail(str(exc))
    finally:
        store.close()
    click.echo(clearance_document(record).plain)
    click.echo("The running bot removes the user from rooms within its sweep interval.")


@clearance.command("show")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.argument("user")
@json_option
def clearance_show(config_path: str, user: str, as_json: bool) -> None:
    """Show USER's clearance record; exit 1 if there is none. Reads the database read-only.

    \b
    Example:
      liaison-bot clearance show --config config.toml @lo-deu:example.org
      liaison-bot clearance show --config config.toml @lo-deu:example.org --json
    """
    register, store = _register(config_path, read_only=True)
    try:
        record = register.show(user)
    except RegisterError as exc:
        _fail(str(exc))
    finally:
        store.close()
    code = _report_refused(store)
    if as_json:
        _emit({"user_id": user, "clearance": clearance_json(record) if record else None})
    elif record is None:
        click.echo(f"{user}: no clearance on record")
    else:
        click.echo(clearance_document(record).plain)
    sys.exit(EXIT_OK if record is not None and code == EXIT_OK else EXIT_NO)


@clearance.command("list")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@json_option
def clearance_list(config_path: str, as_json: bool) -> None:
    """List every clearance record. Reads the database read-only.

    \b
    Example:
      liaison-bot clearance list --config config.toml
      liaison-bot clearance list --config config.toml --json
    """
    register, store = _register(config_path, read_only=True)
    try:
        records = register.records()
    finally:
        store.close()
    code = _report_refused(store)
    if as_json:
        _emit({"clearances": [clearance_json(r) for r in records]})
        sys.exit(code)
    if not records:
        click.echo(
            "The clearance register is empty."
            if code == EXIT_OK
            else "No clearance on record verifies (see the warnings)."
        )
    for record in records:
        click.echo(clearance_document(record).plain)
    sys.exit(code)


REGISTER_FORMATS = ("csv", "json")
REGISTER_FILE_FORMAT = "liaison-bot clearances v1"  # the JSON file's "format"

# A CSV cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, or after a tab or a
# carriage return: "CSV injection", e.g. `=HYPERLINK(…)` or a DDE call) is written with a
# leading apostrophe, which spreadsheets take as "text"; so is a cell that starts with an
# apostrophe, so that `clearance import`, which takes one leading apostrophe off every CSV
# cell, reads back exactly what was exported. A user id in today's Matrix grammar (letters,
# digits and ._=-/+ before the server) cannot call anything, and is left as it is: every
# id starts with `@`, and a register full of apostrophes would be read as damaged.
_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
_PLAIN_USER_ID = re.compile(r"@[a-z0-9._=\-/+]+:[A-Za-z0-9.\-\[\]:]+")


def csv_cell(value: str) -> str:
    """A register value as a CSV cell no spreadsheet runs (see `_CSV_FORMULA_START`)."""
    if value.startswith(_CSV_FORMULA_START) and not _PLAIN_USER_ID.fullmatch(value):
        return "'" + value
    return value


def csv_value(cell: str) -> str:
    """A CSV cell as the register value it stands for (`csv_cell` undone)."""
    return cell.removeprefix("'")


def _register_format(fmt: str | None, path: str | None, option: str) -> str:
    """`--format`, else the file's extension; JSON on stdout/stdin when neither says."""
    if fmt is not None:
        return fmt
    if path is None or path == "-":
        return "json"
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in REGISTER_FORMATS:
        _fail(f"{option}: cannot tell the format of {path} from its extension: give --format")
    return suffix


@clearance.command("export")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out", type=click.Path(dir_okay=False), help="File to write (new).")
@click.option(
    "--format", "fmt", type=click.Choice(REGISTER_FORMATS), help="Default: from --out, else json."
)
def clearance_export(config_path: str, out: str | None, fmt: str | None) -> None:
    """Write the whole register (per person: levels, nationality, caveats, expiry, revoked)
    as CSV or JSON, to stdout or a new file --out (0600: it names people). `clearance
    import` reads it back; exporting and importing changes nothing. Reads the database
    read-only.

    \b
    Example:
      liaison-bot clearance export --config config.toml --out register.csv
      liaison-bot clearance export --config config.toml --format json > register.json
    """
    import csv
    import io

    from bot.services.register import REGISTER_FIELDS, register_rows

    chosen = _register_format(fmt, out, "--out")
    register, store = _register(config_path, read_only=True)
    try:
        rows = register_rows(register.records())
    finally:
        store.close()
    if _report_refused(store) != EXIT_OK:  # an export is whole or not written at all
        _fail("the register has rows that do not verify: nothing exported", EXIT_NO)
    if chosen == "json":
        text = json.dumps(
            {"format": REGISTER_FILE_FORMAT, "clearances": rows}, ensure_ascii=False, indent=2
        )
        text += "\n"
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=REGISTER_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            cells = {
                **row,
                "levels": ";".join(row["levels"]),
                "caveats": ";".join(row["caveats"]),
                "expires": row["expires"] or "",
                "revoked": "yes" if row["revoked"] else "no",
            }
            writer.writerow({name: csv_cell(str(cell)) for name, cell in cells.items()})
        text = buffer.getvalue()
    if out is None or out == "-":
        click.echo(text, nl=False)
        return
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _fail(f"--out: {out} exists; refusing to overwrite it")
    except OSError as exc:
        _fail(f"--out: cannot create {out}: {exc.strerror}")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:  # a full disk, say: no half register left behind
        os.unlink(out)
        _fail(f"--out: cannot write {out}: {exc.strerror}; nothing was written")
    click.echo(f"wrote {len(rows)} clearance record(s) to {out}", err=True)


def _register_file_rows(path: str, fmt: str) -> list[tuple[str, dict[str, Any]]]:
    """The rows of a register file as (where, fields): "line N" (CSV, the header is line
    1) or "clearances[i]" (JSON). A file that is not CSV or JSON at all fails here."""
    import csv
    import io

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"FILE: cannot read {path}: {exc}")
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            _fail(f"{path}: not JSON: {exc}")
        if isinstance(data, dict) and data.get("format") not in (None, REGISTER_FILE_FORMAT):
            _fail(f"{path}: format {data.get('format')!r}, expected {REGISTER_FILE_FORMAT!r}")
        items = data.get("clearances") if isinstance(data, dict) else data
        if not isinstance(items, list):
            _fail(f'{path}: expected {{"clearances": [...]}} (or a list of records)')
        rows: list[tuple[str, dict[str, Any]]] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                _fail(f"{path}: clearances[{i}]: not an object")
            rows.append((f"clearances[{i}]", item))
        return rows
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for fields in reader:
        if None in fields:  # more cells than the header names
            _fail(f"{path}: line {reader.line_num}: more cells than the header has columns")
        present = {k: csv_value(v) for k, v in fields.items() if v is not None}
        rows.append((f"line {reader.line_num}", present))
    return rows


@clearance.command("import")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--format", "fmt", type=click.Choice(REGISTER_FORMATS), help="Default: from FILE's extension."
)
@click.option(
    "--revoke-missing",
    is_flag=True,
    help="Revoke every active record FILE does not name (default: leave them as they are).",
)
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
def clearance_import(
    config_path: str, file: str, fmt: str | None, revoke_missing: bool, dry_run: bool
) -> None:
    """Bring the register to what FILE (CSV or JSON, as `clearance export` writes) says,
    person by person: added, changed (levels, caveats, nationality, expiry set to the
    file's), revoked (a row with revoked = yes; with --revoke-missing, everyone the file
    leaves out). The whole file is checked first: any bad row (named by line or index and
    field) changes nothing. Then all changes are made in one transaction, audited as
    `clearance grant` and `revoke` audit theirs (one row per grant given or changed, one per
    revocation). Exit 0 applied (or nothing to do), 2 bad file.

    \b
    Example:
      liaison-bot clearance import --config config.toml register.csv --dry-run
      liaison-bot clearance import --config config.toml register.csv --revoke-missing
    """
    from bot.storage.bulk import ChangeKind, ImportRefused

    chosen = _register_format(fmt, file, "FILE")
    config = _load(config_path)
    rows = _register_file_rows(file, chosen)
    if revoke_missing and not rows:
        # An empty file is far likelier a failed export than the wish to revoke everyone.
        _fail(
            f"{file} names nobody: with --revoke-missing it would revoke everyone; list "
            "them with revoked = yes to do that"
        )
    store = _offline_store(config)
    register = ClearanceRegister(store, config.bot.caveats)
    try:
        wanted = register.wanted(rows)
        changes = register.apply(
            _cli_actor(), wanted, revoke_missing=revoke_missing, dry_run=dry_run
        )
    except ImportRefused as exc:
        for problem in exc.problems:
            click.echo(f"error: {file}: {problem}", err=True)
        click.echo(f"error: {file}: nothing was changed", err=True)
        sys.exit(EXIT_BAD)
    finally:
        store.close()
    counts = {kind: 0 for kind in ChangeKind}
    would = "would be " if dry_run else ""
    for change in changes:
        counts[change.kind] += 1
        if change.kind is ChangeKind.UNCHANGED:
            continue
        why = (
            " (not in the file)"
            if change.missing
            else f" ({', '.join(change.fields)})"
            if change.fields
            else ""
        )
        click.echo(f"{change.user_id}: {would}{change.kind.value}{why}")
    summary = ", ".join(f"{kind.value} {counts[kind]}" for kind in ChangeKind)
    missing = sum(1 for c in changes if c.missing)
    tail = f"; {missing} revoked as missing from the file" if revoke_missing else ""
    click.echo(f"{'dry run, nothing changed: ' if dry_run else ''}{summary}{tail}")


# ---------------------------------------------------------------- audit


@main.group()
def audit() -> None:
    """The audit log."""


@audit.command("verify")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@json_option
def audit_verify(config_path: str, as_json: bool) -> None:
    """Check the audit log's hash chain: exit 0 intact; 1 broken (tampered with or damaged,
    naming the first bad row); 2 cannot verify: the log is keyed and the data key is not
    set, or the key given does not open it, or the log carries no key marker (the bot has
    never run on it, or the marker was removed: unkeyed rows can be rewritten by anyone
    with write access to the database). Reads the database read-only.

    \b
    Example:
      LIAISON_DATA_KEY=… liaison-bot audit verify --config config.toml
      LIAISON_DATA_KEY=… liaison-bot audit verify --config config.toml --json
    """
    from bot.storage.offline import ChainStatus, check_chain

    config = _load(config_path)
    store = _offline_store(config, read_only=True)
    try:
        check = check_chain(store)
    finally:
        store.close()
    message = check.message
    if check.reason == "no_key":
        message = (
            f"the data key is not set ({_key_source(config, 'data')}), "
            "and the log is keyed with it: set it to the bot's data key"
        )
    code = {
        ChainStatus.INTACT: EXIT_OK,
        ChainStatus.BROKEN: EXIT_NO,
        ChainStatus.CANNOT_VERIFY: EXIT_BAD,
    }[check.status]
    if as_json:
        _emit(
            {
                "status": check.status.value,
                "intact": check.status is ChainStatus.INTACT,
                "entries": check.entries,
                "reason": check.reason,
                "message": message,
            }
        )
    elif check.status is ChainStatus.CANNOT_VERIFY:
        click.echo(f"error: cannot verify: {message}", err=True)
    else:
        click.echo(f"audit log {'intact' if code == EXIT_OK else 'BROKEN'}: {message}")
    sys.exit(code)


EXPORT_CHUNK = 1000  # rows read at a time by `audit export`


@audit.command("export")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--from", "from_id", type=click.IntRange(min=1), default=1, help="First row id (default 1)."
)
@click.option("--to", "to_id", type=click.IntRange(min=1), help="Last row id (default: newest).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ocsf", "cef"]),
    help="Event format (default: [siem] format, else ocsf).",
)
def audit_export(config_path: str, from_id: int, to_id: int | None, fmt: str | None) -> None:
    """Write the audit rows FROM..TO to stdout as the SIEM gets them, one event a line (OCSF:
    NDJSON; CEF: one record a line), with the markings [siem] sets; no SIEM needed.

    \b
    Example:
      liaison-bot audit export --config config.toml --from 1200 --to 1300 > audit.ndjson

    Reads the database read-only.
    """
    from bot.siem import formatter

    config = _load(config_path)
    if to_id is not None and to_id < from_id:
        _fail(f"--to: {to_id} is before --from {from_id}")
    chosen = fmt or (config.siem.format if config.siem else "ocsf")
    render = formatter(
        "cef" if chosen == "cef" else "ocsf", config.siem.markings if config.siem else "level"
    )
    store = _offline_store(config, read_only=True)
    try:
        cursor = store.siem_cursor()
        if cursor is None:  # only when deleted by hand: the bot makes it again at its start
            _fail("the SIEM cursor row is missing (it holds the installation id): start the bot")
        installation = cursor.installation
        after = from_id - 1
        while rows := store.audit_after(after, EXPORT_CHUNK, until_id=to_id):
            for row in rows:
                click.echo(render(row.entry, installation).body)
            after = rows[-1].entry.id
    finally:
        store.close()


@audit.command("siem-status")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Accepted for scripts: always JSON.")
def audit_siem_status(config_path: str, as_json: bool) -> None:
    """The SIEM export as JSON (always; --json is accepted like on the other listings):
    the cursor (last row confirmed, when), the rows waiting, the outage in progress
    (failures, since when, the last error). Reads the database read-only.

    \b
    Example:
      liaison-bot audit siem-status --config config.toml
    """
    config = _load(config_path)
    store = _offline_store(config, read_only=True)
    try:
        cursor = store.siem_cursor()
        position = cursor.position if cursor else None
        waiting = store.audit_rows_after(position.last_id if position else 0)
    finally:
        store.close()

    def when(at: datetime | None) -> str | None:
        return at.isoformat(timespec="seconds") if at else None

    _emit(
        {
            "target": config.siem.target if config.siem else None,
            "installation": cursor.installation if cursor else None,
            "started": position is not None,
            "last_id": position.last_id if position else None,
            "last_hash": position.last_hash if position else None,
            "confirmed_at": when(cursor.confirmed_at) if cursor else None,
            "lag_rows": waiting,
            "failures": cursor.failures if cursor else 0,
            "failing_since": when(cursor.failing_since) if cursor else None,
            "last_error": cursor.last_error if cursor else None,
        }
    )


@audit.command("siem-rewind")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--to",
    "to_id",
    required=True,
    type=click.IntRange(min=0),
    help="Send again every row after this id (0: the whole log).",
)
def audit_siem_rewind(config_path: str, to_id: int) -> None:
    """Send the audit rows after TO to the SIEM again (a SIEM that lost them, a new one);
    audited `siem.rewound`. Never forward: nothing is skipped this way. The running bot
    notices at its next batch (this command's own audit row is one). Writes the database.

    \b
    Example:
      liaison-bot audit siem-rewind --config config.toml --to 1200
    """
    config = _load(config_path)
    store = _offline_store(config)
    try:
        store.rewind_siem_cursor(_cli_actor(), to_id)
        waiting = store.audit_rows_after(to_id)
    finally:
        store.close()
    click.echo(f"the SIEM export resends from after row {to_id}: {waiting} row(s) to send")


# ---------------------------------------------------------------- keys


@main.group()
def keys() -> None:
    """The bot's keys: rotate the data or pickle key, forget a stolen login, move the
    cross-signing keys between stores in a 0600 recovery file."""
    from bot.initconfig import bot_runtime_missing

    # The keys live in nio's crypto store and the bot's Matrix edge: a gate-only install
    # gets the fix, not a traceback from an import.
    if (missing := bot_runtime_missing()) is not None:
        _fail(missing)


RECOVERY_FORMAT = "liaison-bot cross-signing recovery v1"


def _pickle_sealer(config: Config) -> Sealer:
    from bot.matrix.trust import key_sealer

    secret = read_pickle_key(config)
    if not secret:
        _fail(f"the pickle key ({_key_source(config, 'pickle')}) is not set; it seals the keys")
    return key_sealer(secret)


@keys.command("export-recovery")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False))
def keys_export(config_path: str, out: str) -> None:
    """Write the bot's cross-signing private keys to a new file readable only by you (0600).

    Keep the file offline: whoever holds it can vouch for devices in the bot's name.

    \b
    Example:
      liaison-bot keys export-recovery --config config.toml --out /media/safe/liaison-keys.json
    """
    from bot.storage.rotate import marker_sealed_with

    config = _load(config_path)
    sealer = _pickle_sealer(config)
    data_key = read_data_key(config)
    if not data_key:  # the export is audited, and the keyed log needs the data key
        _fail(
            f"the data key ({_key_source(config, 'data')}) is not set; "
            "the export is audited with it. Nothing was written."
        )
    if os.path.lexists(out):
        _fail(f"--out: {out} exists; refusing to overwrite a key file")
    store = _offline_store(config)
    try:
        assert store.audit_key is not None  # the data key is set
        if marker_sealed_with(store, store.audit_key) is False:
            _fail(
                f"the data key ({_key_source(config, 'data')}) is not the key of this audit "
                "log; the export could not be audited. Nothing was written.",
                EXIT_NO,
            )
        saved = store.cross_signing()
        if saved is None:
            _fail("this database holds no cross-signing keys yet (start the bot once)", EXIT_NO)
        user_id, master, sealed = saved
        try:
            private = json.loads(sealer.open_text(sealed, user_id))
        except SealError as exc:
            _fail(
                f"cannot open the sealed keys: {exc} (is {_key_source(config, 'pickle')} "
                "the bot's pickle key?)",
                EXIT_NO,
            )
        payload = {
            "format": RECOVERY_FORMAT,
            "master_public": master,
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **private,
        }
        _write_and_record(
            store,
            out,
            json.dumps(payload, indent=2, sort_keys=True) + "\n",
            user_id,
            {"master": master},
        )
    finally:
        store.close()
    click.echo(f"wrote the cross-signing keys of {user_id} (master {master}) to {out} (0600)")


# link() is refused with these where the file system has no hard links (FAT and exFAT: the
# USB stick a recovery file is meant to go to).
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP}


def _place_new(temp: str, out: str) -> None:
    """Give the whole file `temp` the name `out`, never replacing a file already there:
    link() refuses an existing name atomically. Where the file system has no hard links,
    rename() after a check instead: a file appearing between the two on the
    administrator's own medium is the one case left."""
    try:
        os.link(temp, out)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(out):
            raise FileExistsError(errno.EEXIST, "File exists", out) from None
        os.rename(temp, out)


def _write_and_record(
    store: Store, out: str, content: str, subject: str, detail: dict[str, Any]
) -> None:
    """Write `content` to a new 0600 file `out` and its audit row (`keys.exported`, of
    `subject` with `detail`), both or neither. Why: an export nobody can see in the log is
    what an insider would want. The row is added in a transaction committed only once the
    file is whole on disk (written to a temporary name beside it, fsynced, linked to its
    name, which refuses an existing file, and the folder fsynced); a row that cannot be
    written comes first and stops it, a file that cannot be written rolls the row back, a
    commit that fails removes the file."""
    import contextlib

    from bot.storage.store import append_audit

    folder = os.path.dirname(os.path.abspath(out))
    temp = os.path.join(folder, f".{os.path.basename(out)}.{os.getpid()}.tmp")
    placed = False
    try:
        with store.session() as session:
            append_audit(session, _cli_actor(), "keys.exported", subject, detail)
            session.flush()  # the row is in: a refusal (no key, another key) came before
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(content)
                    handle.flush()
                    os.fsync(handle.fileno())
                _place_new(temp, out)
                placed = True
                dir_fd = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except FileExistsError:
                _fail(f"--out: {out} exists; refusing to overwrite a key file")
            except OSError as exc:
                _fail(f"--out: cannot write {out}: {exc}. Nothing was written.")
    except BaseException:
        if placed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


@keys.command("import-recovery")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--force", is_flag=True, help="Replace different keys already in the database.")
def keys_import(config_path: str, file: str, force: bool) -> None:
    """Restore the bot's cross-signing keys from a recovery file into this database.

    \b
    Example:
      liaison-bot keys import-recovery --config config.toml /media/safe/liaison-keys.json
    """
    from bot.matrix.crosssign import CrossSigningKeys

    config = _load(config_path)
    mode = os.stat(file).st_mode & 0o777
    if mode & 0o077:
        _fail(f"{file} is readable by others (mode {mode:o}); chmod 600 it first")
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
        if data.get("format") != RECOVERY_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {RECOVERY_FORMAT!r}")
        recovered = CrossSigningKeys.from_json(json.dumps(data))
    except (ValueError, OSError) as exc:
        _fail(f"{file}: not a recovery file: {exc}")
    if recovered.user_id != config.homeserver.user_id:
        _fail(
            f"{file} holds the keys of {recovered.user_id}, but this bot is "
            f"{config.homeserver.user_id}"
        )
    if recovered.master.public != data.get("master_public"):
        _fail(f"{file}: the master key does not match master_public; the file is damaged")
    sealer = _pickle_sealer(config)
    store = _offline_store(config)
    try:
        saved = store.cross_signing()
        if saved is not None and saved[1] != recovered.master.public and not force:
            _fail(
                f"this database already holds other keys (master {saved[1]}); use --force "
                "to replace them",
                EXIT_NO,
            )
        store.save_cross_signing(
            recovered.user_id,
            recovered.master.public,
            sealer.seal_text(recovered.to_json(), recovered.user_id),
            _cli_actor(),
        )
    finally:
        store.close()
    click.echo(
        f"imported the cross-signing keys of {recovered.user_id} "
        f"(master {recovered.master.public}); the bot uses them at its next start"
    )


def _new_key(new_key_file: str | None, new_key_env: str | None) -> str:
    """The new key, from a file or a named environment variable, never
    from the command line (which other users see in the process list); held to the same
    strength rule as a start."""
    from bot.startup import KEY_RULE, MIN_KEY_CHARS

    if (new_key_file is None) == (new_key_env is None):
        _fail("give the new key with exactly one of --new-key-file PATH or --new-key-env NAME")
    if new_key_file is not None:
        from bot.config import SecretSource
        from bot.startup import read_secret_file

        # Read exactly as the bot reads a secret file (bot/startup.py: one trailing line
        # end stripped, "\n" or "\r\n"; opened once, never blocking; 0600), so the same
        # file given to the bot afterwards is the same key: a key rotated to "KEY\r" from
        # a file with Windows line ends would open nothing the bot reads as "KEY".
        source = f"--new-key-file {new_key_file}"
        try:
            key = read_secret_file(SecretSource("--new-key-file", "file", new_key_file))
        except ValueError as exc:
            known = (
                " (and make a new key: this one may be known)" if "by others" in str(exc) else ""
            )
            _fail(f"{exc}{known}. Nothing was changed.")
        if "\n" in key:
            _fail(f"{source}: the file holds more than one line. Nothing was changed.")
    else:
        assert new_key_env is not None
        key, source = os.environ.get(new_key_env, ""), f"--new-key-env {new_key_env}"
    if not key:
        _fail(f"{source}: no key there. Nothing was changed.")
    if len(key) < MIN_KEY_CHARS:
        _fail(
            f"{source}: the new key is too short ({len(key)} characters); it must be "
            f"{KEY_RULE}. Nothing was changed."
        )
    return key


def _progress(what: str, done: int, total: int) -> None:
    from bot.storage.rotate import format_count

    click.echo(f"{what} {format_count(done)}/{format_count(total)}")


def _data_sealed(store: Store, old: str, new: str) -> list[Any]:
    """Every value sealed under the data key, with its sealing context and binding (the
    services and the sync loop seal them so)."""
    from bot.matrix.sync import MANIFEST
    from bot.services.digest import parts_binding as digest_binding
    from bot.services.relay import SEAL_VERSION, item_binding, ledger_binding
    from bot.storage import DigestRunRow, IntelItemRow, RelayRow, RoomSnapshotRow
    from bot.storage.rotate import Sealed, release_sealed

    def pair(purpose: str, version: bytes | None = None) -> tuple[Sealer, Sealer]:
        if version is None:
            return Sealer(old, purpose), Sealer(new, purpose)
        return Sealer(old, purpose, version), Sealer(new, purpose, version)

    items, ledger = pair("intel-item", SEAL_VERSION), pair("intel-ledger", SEAL_VERSION)
    snapshots = pair("room-snapshot")
    parts = (
        Sealer(audit_key_from(old).hex(), "digest-parts"),
        Sealer(audit_key_from(new).hex(), "digest-parts"),
    )
    token = store.sync_token() or ""

    def snapshot(row: Any) -> str | None:
        if row.room_id == MANIFEST:
            return _moved(*snapshots, row.sealed, f"{MANIFEST}\n{token}")
        written, _, sealed = str(row.sealed).partition(" ")
        moved = _moved(*snapshots, sealed, f"{row.room_id}\n{written}")
        return None if moved is None else f"{written} {moved}"

    return [
        Sealed(
            "intel items",
            IntelItemRow,
            "id",
            "text",
            lambda r: _moved(*items, r.text, item_binding(r.event_id, r.room_key, r.label)),
        ),
        Sealed(
            "relay ledger rows",
            RelayRow,
            "id",
            "content",
            lambda r: _moved(
                *ledger, r.content, ledger_binding(r.txn_id, r.target_key, r.target_room_id)
            ),
        ),
        Sealed(
            "digest runs",
            DigestRunRow,
            "id",
            "parts",
            lambda r: _moved(
                *parts, r.parts, digest_binding(r.schedule_key, r.window_end, r.room_key)
            ),
        ),
        Sealed("room snapshots", RoomSnapshotRow, "room_id", "sealed", snapshot, droppable=True),
        *release_sealed(old, new),
    ]


def _pickle_sealed(old: str, new: str) -> list[Any]:
    """The values the database holds under the pickle key (beside the crypto store)."""
    from bot.matrix.trust import key_sealer
    from bot.storage import BotSessionRow, CrossSigningRow
    from bot.storage.rotate import Sealed

    token = Sealer(old, "access-token"), Sealer(new, "access-token")
    keys = key_sealer(old), key_sealer(new)
    return [
        Sealed(
            "access token",
            BotSessionRow,
            "id",
            "access_token",
            lambda r: _moved(*token, r.access_token, r.device_id),
        ),
        Sealed(
            "cross-signing keys",
            CrossSigningRow,
            "id",
            "sealed",
            lambda r: _moved(*keys, r.sealed, r.user_id),
        ),
    ]


@keys.command("rotate")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--data", "which", flag_value="data", help="Rotate the data key.")
@click.option("--pickle", "which", flag_value="pickle", help="Rotate the pickle key.")
@click.option(
    "--new-key-file",
    type=click.Path(dir_okay=False),
    help="A file holding the new key, readable by you only (0600).",
)
@click.option(
    "--new-key-env", metavar="NAME", help="The name of an environment variable holding it."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=100_000),
    default=500,
    show_default=True,
    help="Values resealed per transaction.",
)
def keys_rotate(
    config_path: str,
    which: str | None,
    new_key_file: str | None,
    new_key_env: str | None,
    batch_size: int,
) -> None:
    """Reseal everything under a new data key (--data) or pickle key (--pickle).

    STOP THE BOT FIRST (both nodes of a high-availability pair; a pair's lease held now is
    refused). The current key is read as the bot reads it (the config's *_env or *_file
    setting); the new one from --new-key-file or --new-key-env, never the command line.
    Work goes in batches, one transaction each, with progress: if it is cut off, run the
    same command again and it finishes (every value opens with one of the two keys at every
    moment; do not start the bot in between). Audited (keys.rotating, keys.rotated).
    Then give the bot the new key and start it; after --data, also give the homeserver
    gate the new register_key this prints (`liaison-bot gate synapse-config` prints it).
    Step by step: docs/keys.md.

    \b
    Example:
      (umask 077; openssl rand -hex 32 > /run/liaison/new-data-key)
      liaison-bot keys rotate --data --config config.toml \\
          --new-key-file /run/liaison/new-data-key
    """
    if which is None:
        _fail("say which key: --data or --pickle")
    config = _load(config_path)
    new = _new_key(new_key_file, new_key_env)
    data_key, pickle_key = read_data_key(config), read_pickle_key(config)
    if not data_key:
        _fail(
            f"the data key ({_key_source(config, 'data')}) is not set: "
            "it is needed to open the data and to audit the rotation. Nothing was changed."
        )
    if which == "pickle" and not pickle_key:
        _fail(
            f"the pickle key ({_key_source(config, 'pickle')}) "
            "is not set: it opens what is to be resealed. Nothing was changed."
        )
    current = data_key if which == "data" else pickle_key
    other = pickle_key if which == "data" else data_key
    if new == current:
        _fail(f"the new key is the current {which} key. Nothing was changed.")
    if new == other:
        _fail("the new key is the bot's other key; each key must be its own. Nothing was changed.")
    assert current is not None
    # The database first: a wrong path is refused before the lock below would make its
    # folder and lock file there. Opening it changes nothing; no value is resealed before
    # the lock is held. The lock is held for the whole rotation, so a bot cannot start
    # half-way through.
    store = _offline_store(config)
    lock = _hold_run_lock(config, store)
    try:
        if which == "data":
            _rotate_data(store, current, new, batch_size)
        else:
            _rotate_pickle(config, store, current, new, batch_size)
    finally:
        store.close()
        lock.release()


def _hold_run_lock(config: Config, store: Store) -> RunLock:
    """ "Stop the bot first", enforced: the run lock a single running bot holds (a pair:
    the lease, `_refuse_running`), taken for the command's whole work. Refused: `store` is
    closed and the command ends, nothing changed."""
    from bot.storage.runlock import LockFileUnusable, StoreBusy, hold_run_lock

    try:
        return hold_run_lock(config.database_url())
    except StoreBusy as exc:
        store.close()
        todo = "" if isinstance(exc, LockFileUnusable) else ": stop it first"
        _fail(f"{exc}{todo}. Nothing was changed.", EXIT_NO)


def _refuse_running(store: Store) -> None:
    from bot.storage.rotate import lease_holder

    holder = lease_holder(store)
    if holder is not None:
        _fail(
            f"a bot is running on this database (node {holder} holds the lease): stop both "
            "nodes first. Nothing was changed.",
            EXIT_NO,
        )


def _rotate_data(store: Store, old: str, new: str, batch_size: int) -> None:
    from bot.storage.rotate import (
        RotationError,
        check,
        finish_data_rotation,
        marker_sealed_with,
        reseal,
        resign_register,
        unfinished,
    )
    from bot.storage.store import register_public_key

    _refuse_running(store)
    old_audit, new_audit = audit_key_from(old), audit_key_from(new)
    register_key = register_public_key(new)
    if marker_sealed_with(store, new_audit):
        click.echo(
            "the data is already under the new key (the rotation finished). Give the bot the "
            f"new key, and the gate register_key = {register_key}"
        )
        return
    if marker_sealed_with(store, old_audit) is False:
        _fail(
            "the current data key is not the key of this audit log: set the key the bot runs "
            "with. Nothing was changed.",
            EXIT_NO,
        )
    # The same verdict as `audit verify`, not only "no row is wrong": the rotation's anchor
    # vouches for every row before it under the new key, so a log that cannot be vouched for
    # (one stripped of its key marker and re-hashed without the key) must not be laundered.
    from bot.storage.offline import ChainStatus, check_chain

    verdict = check_chain(store)
    if verdict.status is not ChainStatus.INTACT:
        _fail(
            f"the audit log does not verify ({verdict.message}): a rotation would vouch for "
            "it under the new key. Find out why first (liaison-bot audit verify). Nothing "
            "was changed.",
            EXIT_NO,
        )
    started = unfinished(store, "data")
    if started is not None and started.get("register_key") != register_key:
        _fail(
            f"a rotation to another data key (register_key {started.get('register_key')}) was "
            "cut off: run it again with that key to finish it, then rotate again. Nothing "
            "was changed.",
            EXIT_NO,
        )
    kinds = _data_sealed(store, old, new)
    try:
        waiting = check(store, kinds, batch_size)
    except RotationError as exc:
        _fail(str(exc), EXIT_NO)
    click.echo(
        ("resuming the cut-off rotation: " if started else "rotating the data key: ")
        + ", ".join(f"{what} {n}" for what, n in waiting.items())
        + " to reseal"
    )
    if started is None:
        store.append_audit(
            _cli_actor(), "keys.rotating", None, {"key": "data", "register_key": register_key}
        )
    try:
        moved = reseal(store, kinds, _progress, batch_size)
        signed, refused = resign_register(store, old_audit, new_audit, _progress, batch_size)
    except RotationError as exc:
        _fail(f"{exc}; run the same command again to finish", EXIT_NO)
    finish_data_rotation(
        Store(store.engine, new_audit),
        _cli_actor(),
        {"register_key": register_key},
        {
            "key": "data",
            "register_key": register_key,
            "resealed": moved,
            "register_rows_signed": signed,
            "register_rows_left_refused": refused,
        },
    )
    if refused:
        click.echo(
            f"{refused} register row(s) did not verify under the old key and stay refused "
            "(changed outside the bot): see the audit log's register.refused entries"
        )
    click.echo(
        "the data key is rotated; the audit log continues under it.\n"
        f"register_key = {register_key}\n"
        "Next: 1. give the bot the new key (storage.data_key_env or its file) and remove the "
        "old one; 2. give the homeserver gate this register_key (liaison-bot gate "
        "synapse-config prints the whole block) and restart Synapse; 3. start the bot."
    )


def _rotate_pickle(config: Config, store: Store, old: str, new: str, batch_size: int) -> None:
    from bot.matrix.rotate import check_pickles, close_stores, crypto_stores, repickle_stores
    from bot.storage.rotate import RotationError, check, reseal, unfinished

    _refuse_running(store)
    if store.audit_key is not None:
        from bot.storage.rotate import marker_sealed_with

        if marker_sealed_with(store, store.audit_key) is False:
            _fail(
                "the data key is not the key of this audit log; the rotation could not be "
                "audited. Nothing was changed.",
                EXIT_NO,
            )
    stores = crypto_stores(config)
    try:
        kinds = _pickle_sealed(old, new)
        try:
            waiting = check_pickles(stores, old, new, batch_size) | check(store, kinds, batch_size)
        except RotationError as exc:
            _fail(str(exc), EXIT_NO)
        started = unfinished(store, "pickle")
        if started is None and not any(waiting.values()):
            click.echo("everything already opens with the new pickle key: nothing to do")
            return
        click.echo(
            ("resuming the cut-off rotation: " if started else "rotating the pickle key: ")
            + ", ".join(f"{what} {n}" for what, n in waiting.items())
            + " to reseal"
        )
        if started is None:
            store.append_audit(_cli_actor(), "keys.rotating", None, {"key": "pickle"})
        try:
            moved = repickle_stores(stores, old, new, _progress, batch_size)
            moved |= reseal(store, kinds, _progress, batch_size)
        except RotationError as exc:
            _fail(f"{exc}; run the same command again to finish", EXIT_NO)
        store.append_audit(_cli_actor(), "keys.rotated", None, {"key": "pickle", "resealed": moved})
    finally:
        close_stores(stores)
    click.echo(
        "the pickle key is rotated.\n"
        "Next: give the bot the new key (homeserver.pickle_key_env or its file), remove the "
        "old one, and start the bot."
    )


@keys.command("forget-login")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
def keys_forget_login(config_path: str) -> None:
    """Forget the bot's stored login, after its access token was stolen and its devices
    logged out on the homeserver: the next start logs in with the password as a NEW
    device, which the bot cross-signs with its own keys. Stop the bot first. Audited.

    Why a new device: logging the old one out deleted it and its keys on the homeserver,
    and a login under its old id would bring it back without them (nobody could encrypt
    to it). See docs/keys.md, "A stolen access token".

    \b
    Example:
      liaison-bot keys forget-login --config config.toml
    """
    config = _load(config_path)
    store = _offline_store(config)
    # Forgetting the login under a running bot would look done while it goes on with the
    # old device.
    lock = _hold_run_lock(config, store)
    try:
        _refuse_running(store)
        try:
            device = store.forget_bot_session(_cli_actor())
        except StoreError as exc:
            _fail(f"{exc}. Nothing was changed.", EXIT_NO)
    finally:
        store.close()
        lock.release()
    if device is None:
        click.echo("no stored login: the next start logs in with the password")
        return
    click.echo(
        f"forgot the login of device {device}; the next start logs in with the password as a "
        "new device (and cross-signs it): the bot must have its (new) password"
    )


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point for tests: run the CLI in-process and return its exit code."""
    try:
        main.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    main()
