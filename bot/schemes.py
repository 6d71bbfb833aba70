"""The site schemes file: national schemes a site adds or overrides without editing the
installed package (a partner nation, an updated national level).

Reading the file is I/O, so it lives here; building and validating the catalogue is
`policy.with_site`, pure. The file has the packaged file's form: `[[schemes]]` tables with
`code`, `name`, `sources`, `absent` and `levels`. A code already in the package replaces that
scheme whole (said in a log line at start); NATO and EU cannot be overridden.

Installed once per process, before anything parses a marking: by config loading
(`[bot] schemes_file`), by the CLI's `--schemes FILE`, and by the gate's config parsing
(`schemes_file` in its module config).
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

from policy import Catalogue, CatalogueError, install_catalogue, with_site

log = logging.getLogger(__name__)


MAX_FILE_SIZE = 1 << 20  # 1 MiB: the packaged file with every nation is under 64 KiB


class SchemesFileError(ValueError):
    """A site schemes file that cannot be used; the message names the file and the key."""


def read_schemes_file(path: str | Path) -> Catalogue:
    """The packaged catalogue plus the file's schemes; SchemesFileError names the file, the
    scheme and the key (`site.toml: schemes[0] (CHE).levels[1].rank: must be 0-4`)."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_SIZE + 1)  # never more: a huge file is refused unread
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise SchemesFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemesFileError(f"{path}: cannot read: {exc}") from None
    if len(raw) > MAX_FILE_SIZE:
        raise SchemesFileError(f"{path}: larger than 1 MiB; a schemes file is a few KiB")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SchemesFileError(f"{path}: not valid TOML: {exc}") from None
    except (RecursionError, MemoryError):
        # tomllib recurses per nesting level: `[[[[…` a few thousand deep exhausts the stack.
        raise SchemesFileError(f"{path}: nested too deeply to read") from None
    try:
        return with_site(data, str(path))
    except CatalogueError as exc:
        raise SchemesFileError(str(exc)) from None


def use_schemes_file(path: str | Path, *, announce: bool = True) -> Catalogue:
    """Read the file and make its catalogue the process's; logs what it adds and replaces
    (`announce=False`: the caller does, once logging is set up)."""
    catalogue = read_schemes_file(path)
    install_catalogue(catalogue)
    if announce:
        announce_site_schemes(catalogue, path)
    return catalogue


def announce_site_schemes(catalogue: Catalogue, path: str | Path) -> None:
    """The start's log line(s): each packaged scheme the file replaces, and what it adds."""
    for code in catalogue.overrides:
        log.warning("site schemes file %s replaces the packaged %s scheme", path, code)
    if catalogue.additions:
        log.info("site schemes file %s adds %s", path, ", ".join(catalogue.additions))
