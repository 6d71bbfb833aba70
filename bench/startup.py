"""Start-to-first-sync time of the bot with N managed rooms (default 20), on a throwaway
Synapse: the first start (rooms created) and a restart (rooms adopted from the database).

Run with `make bench` or `python bench/startup.py [N]`; writes `startup_<N>_rooms_*_s` into
bench/results.json. The bot runs in-process here (from LiaisonBot() to its first sync);
bench/rooms.py measures the bot as its own process.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, record, rooms_config
from bot.app import LiaisonBot, Secrets
from bot.config import load_config
from bot.devtools.devserver import DevServer
from bot.gate.config import register_entry
from bot.storage import Store
from bot.storage.migrate import upgrade

DATA_KEY = "data"  # the bot's data key here; the gate verifies its rows with it


async def start_once(config_path: Path, password: str) -> float:
    config = load_config(config_path)
    await asyncio.to_thread(upgrade, config.database_url())
    store = Store.from_url(config.database_url())
    began = time.monotonic()
    bot = LiaisonBot(config, store, Secrets("pickle", DATA_KEY, password, None))
    try:
        await bot.start()
        await bot.synced.wait()
        return time.monotonic() - began
    finally:
        await bot.close()
        store.close()


async def main(rooms: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, DevServer(Path(tmp) / "synapse") as server:
        user = server.register(f"bench-{secrets.token_hex(3)}", "pw-bench")
        config_path = Path(tmp) / "config.toml"
        config_path.write_text(rooms_config(server.base_url, user.user_id, rooms))
        server.add_register(register_entry(load_config(config_path)), data_key=DATA_KEY)
        first = await start_once(config_path, user.password)
        restart = await start_once(config_path, user.password)
    # The digest's picture loads matplotlib when it draws, never at start: a start that
    # imported it would pay for it in both figures.
    assert "matplotlib" not in sys.modules, "the bot's start imported matplotlib"
    figures = record(
        {
            f"startup_{rooms}_rooms_first_s": round(first, 2),
            f"startup_{rooms}_rooms_restart_s": round(restart, 2),
        },
        "startup_machine",
    )
    print(f"machine: {figures['startup_machine']}")
    print(
        f"{rooms} rooms, bot in-process: first start to first sync {first:.2f} s (rooms "
        f"created), restart to first sync {restart:.2f} s (no goal set; see bench/rooms.py "
        "for the bot as its own process)"
    )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
