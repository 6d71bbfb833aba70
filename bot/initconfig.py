"""`liaison-bot init`: write the commented example config, and the one check that the
running bot's runtime (the `bot` extra) is installed.

A production install comes from a wheel, with no checkout beside it, so the example an
administrator edits ships inside the package (bot/data/config.example.toml) and is written
out from there. The file is written whole or not at all, never over an existing file unless
asked, and readable by its owner and group only: the config names where the secrets are and
who the admins are, which is nobody else's business.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
from importlib.resources import files
from pathlib import Path

#: The mode of a written config: the service's group reads it, nobody else does.
CONFIG_MODE = 0o640
#: The mode of a parent folder `init` creates.
DIR_MODE = 0o750

#: The modules only the running bot imports; the base install (the gate's, in Synapse's
#: environment) has none of them.
BOT_RUNTIME_MODULES = ("nio", "aiohttp", "prometheus_client")
# Not `pip install 'liaison-bot[bot]'`: liaison-bot is not on a public index, and that line
# would fetch whatever is published under its name there.
BOT_RUNTIME_MISSING = (
    "the bot's runtime is not installed: install this wheel with its [bot] extra from the "
    "wheelhouse (docs/install.md)"
)


class InitError(Exception):
    """`init` refused or failed; the message names the path and what to do."""


def example_config() -> bytes:
    """The commented example config as shipped in the package."""
    return files("bot.data").joinpath("config.example.toml").read_bytes()


def write_example_config(path: Path, *, force: bool = False) -> Path:
    """Write the example config to `path` (mode 0640), creating missing parent folders
    (mode 0750). Refuses an existing file unless `force`. The text goes to a temporary file in
    the same folder first and is linked or renamed into place, so a failure leaves either
    nothing or the previous file, never half a config. Returns the absolute path written."""
    target = path.expanduser().absolute()
    if target.is_dir():
        raise InitError(f"{target} is a folder: give the config file's path")
    if target.exists() and not force:
        raise InitError(f"{target} already exists: not overwritten (--force replaces it)")
    # Every folder made here gets DIR_MODE, whatever the umask: mkdir(parents=True) would
    # give the folders above the last the umask's default (0777 under `umask 0`, where
    # anyone could swap the config for their own). Folders already there are left as they are.
    missing = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        for folder in reversed(missing):
            folder.mkdir(mode=DIR_MODE, exist_ok=True)
            folder.chmod(DIR_MODE)
    except OSError as exc:
        raise InitError(f"cannot create the folder {target.parent}: {exc.strerror}") from exc
    if not target.parent.is_dir():
        raise InitError(f"cannot create the folder {target.parent}: a file is in the way")
    text = example_config()
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        raise InitError(f"cannot write in {target.parent}: {exc.strerror}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), CONFIG_MODE)
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if force:
            os.replace(tmp, target)
        else:
            # link() fails if the name appeared since the check above: no overwrite race.
            os.link(tmp, target)
    except FileExistsError as exc:
        raise InitError(f"{target} already exists: not overwritten (--force replaces it)") from exc
    except OSError as exc:
        raise InitError(f"cannot write {target}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def next_steps(path: Path) -> str:
    """What to do after `init`, with the exact commands for this path."""
    return (
        f"wrote {path} (mode 0640). Next:\n"
        f"  1. Edit it: the homeserver's url and the bot's user_id, admins, officers, rooms,\n"
        f"     routes. Relative paths are taken from {path.parent}; for a service point\n"
        f"     database_url and crypto_store at a writable state folder (/var/lib/liaison-bot).\n"
        f"  2. Provide the secrets it names, never in the file itself: the bot's password or\n"
        f"     access token, and the pickle key and the data key (each at least 32 random\n"
        f"     characters: openssl rand -hex 32).\n"
        f"  3. liaison-bot check-config --config {path}\n"
        f"  4. liaison-bot db upgrade --config {path}\n"
        f"  5. liaison-bot run --config {path}"
    )


def bot_runtime_missing() -> str | None:
    """None when the `bot` extra is installed, else the one line saying how to install it.

    Checked before `run` or `demo` import anything of the homeserver edge, so a gate-only
    install answers with the fix instead of a traceback from deep inside an import."""
    if all(importlib.util.find_spec(name) is not None for name in BOT_RUNTIME_MODULES):
        return None
    return BOT_RUNTIME_MISSING
