"""Start-to-first-sync time of the bot with N managed rooms (default 20), on a throwaway
Synapse: the first start (rooms created) and a restart (rooms adopted from the database).

Run with `make bench` or `python bench/startup.py [N]`; writes `startup_<N>_rooms_*_s` into
bench/results.json.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

from bot.app import LiaisonBot, Secrets
from bot.config import load_config
from bot.devserver import DevServer
from bot.migrate import upgrade
from bot.store import Store

RESULTS = Path(__file__).resolve().parent / "results.json"


def config_text(server: DevServer, user_id: str, rooms: int) -> str:
    lines = [
        "[homeserver]",
        f'url = "{server.base_url}"',
        f'user_id = "{user_id}"',
        'password_env = "X"',
        'pickle_key_env = "Y"',
        "[storage]",
        'database_url = "sqlite:///bot.db"',
        'crypto_store = "crypto"',
    ]
    labels = ["NATO SECRET", "EU SECRET", "DEU GEHEIM", "NATO CONFIDENTIAL"]
    for i in range(rooms):
        lines += [
            "[[rooms]]",
            f'key = "room-{i}"',
            f'name = "Room {i}"',
            f'label = "{labels[i % len(labels)]}"',
        ]
    return "\n".join(lines) + "\n"


async def start_once(config_path: Path, password: str) -> float:
    config = load_config(config_path)
    await asyncio.to_thread(upgrade, config.database_url())
    store = Store.from_url(config.database_url())
    began = time.monotonic()
    bot = LiaisonBot(config, store, Secrets("pickle", "data", password, None))
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
        config_path.write_text(config_text(server, user.user_id, rooms))
        first = await start_once(config_path, user.password)
        restart = await start_once(config_path, user.password)
    figures = {
        f"startup_{rooms}_rooms_first_s": round(first, 2),
        f"startup_{rooms}_rooms_restart_s": round(restart, 2),
    }
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(figures)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(
        f"{rooms} rooms: first start to first sync {first:.2f} s (rooms created), "
        f"restart to first sync {restart:.2f} s"
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
