"""`liaison-bot demo`: a throwaway homeserver, the bot, three rooms and a short scenario.

It shows what the bot is for in a minute, with real parts only: a Synapse on loopback, the
bot with its E2EE device, and E2EE clients acting as the people. Every step prints what the
people's clients received, decrypted. Afterwards the homeserver keeps running (until
Ctrl-C) so that anyone can log in with Element and look around.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot.app import LiaisonBot, Secrets
from bot.config import load_config
from bot.devtools import siemdemo
from bot.devtools.botenv import rooms_config
from bot.devtools.devserver import DevServer
from bot.devtools.e2ee_client import E2EEClient, cross_sign, open_dm, talk
from bot.devtools.testca import TestCA
from bot.gate.config import register_entry
from bot.storage import Store
from bot.storage.migrate import upgrade

# deu relays to the NATO and the EU room; nato-s has its twice-daily digest.
ROOMS = rooms_config("eu-s", relay_to=("nato-s", "eu-s"), digest=True)


@dataclass
class Step:
    title: str
    ok: bool = True
    lines: list[str] = field(default_factory=list)


@dataclass
class Report:
    out: Callable[[str], None]
    steps: list[Step] = field(default_factory=list)

    def step(self, title: str) -> Step:
        step = Step(title)
        self.steps.append(step)
        self.out(f"\n── {len(self.steps)}. {title}")
        return step

    def show(self, step: Step, who: str, text: str) -> None:
        self.out(f"   {who}:")
        for line in text.splitlines() or [""]:
            self.out(f"   │ {line}")
        step.lines.append(text)

    def check(self, step: Step, ok: bool, what: str) -> None:
        step.ok = step.ok and ok
        self.out(f"   {'✓' if ok else '✗'} {what}")

    @property
    def passed(self) -> bool:
        return all(s.ok for s in self.steps)


# On the federated demo's NATO homeserver: the NATO and EU analysts and the visitor.
REMOTE_PEOPLE = ("analyst-nor", "analyst-aut", "visitor-fra")


def federated_rooms(national: DevServer, nato: DevServer) -> str:
    """ROOMS, with the NATO and EU rooms open to the NATO server's members too."""
    servers = f'servers = ["{national.server_name}", "{nato.server_name}"]\n'
    rooms = ROOMS
    for label in ('label = "NATO SECRET"\n', 'label = "EU SECRET"\n'):
        rooms = rooms.replace(label, label + servers, 1)
    return rooms


def config_text(server: DevServer, bot: str, admin: str, officer: str, rooms: str = ROOMS) -> str:
    return (
        textwrap.dedent(f"""
        [homeserver]
        url = "{server.base_url}"
        user_id = "{bot}"
        password_env = "LIAISON_DEMO_PASSWORD"
        pickle_key_env = "LIAISON_DEMO_PICKLE_KEY"

        [storage]
        database_url = "sqlite:///liaison.db"
        crypto_store = "crypto"
        data_key_env = "LIAISON_DEMO_DATA_KEY"

        [bot]
        admins = ["{admin}"]
        officers = ["{officer}"]
        """)
        + rooms
    )


async def scenario(
    workdir: Path,
    out: Callable[[str], None],
    *,
    linger: bool,
    federated: bool = False,
    siem: bool = False,
) -> bool:
    report = Report(out)
    receiver: siemdemo.Receiver | None = None
    if siem:
        step = report.step("A local rsyslog receives the audit log as syslog over TLS (RFC 5425)")
        try:
            receiver = await asyncio.to_thread(siemdemo.Receiver.start, workdir / "siem")
        except Exception as exc:  # rsyslogd would not start: say so, start nothing else
            report.check(step, False, f"rsyslog did not start: {exc}")
            return False
        report.check(step, True, f"rsyslogd listening on 127.0.0.1:{receiver.rsyslog.port} (TLS)")
    ca = TestCA.create(workdir / "ca") if federated else None
    server = DevServer(workdir / "synapse", federation=ca)
    remote = DevServer(workdir / "synapse-nato", federation=ca) if federated else server
    if federated:
        step = report.step(
            "Two throwaway Synapses federating over TLS on loopback: the German one and NATO's"
        )
        await asyncio.gather(asyncio.to_thread(server.start), asyncio.to_thread(remote.start))
        report.check(step, True, f"national homeserver {server.server_name} at {server.base_url}")
        report.check(step, True, f"NATO homeserver {remote.server_name} at {remote.base_url}")
    else:
        step = report.step("A throwaway Synapse homeserver on loopback (SQLite, temporary folder)")
        await asyncio.to_thread(server.start)
        report.check(step, True, f"homeserver running at {server.base_url}")

    def password() -> str:
        return f"demo-{secrets.token_hex(4)}"

    names = ("liaison", "secadmin", "lo-deu", "analyst-nor", "analyst-aut", "visitor-fra")
    home = {name: remote if name in REMOTE_PEOPLE else server for name in names}
    users = {name: await asyncio.to_thread(home[name].register, name, password()) for name in names}
    config_path = workdir / "config.toml"
    config_path.write_text(
        config_text(
            server,
            users["liaison"].user_id,
            users["secadmin"].user_id,
            users["lo-deu"].user_id,
            federated_rooms(server, remote) if federated else ROOMS,
        )
        + (receiver.config_section() if receiver is not None else "")
    )
    config = load_config(config_path)
    data_key = secrets.token_hex(16)
    # The homeserver gate enforces this register, verifying its rows with the data key's
    # public half.
    server.add_register(register_entry(config), data_key=data_key)
    await asyncio.to_thread(upgrade, config.database_url())
    store = Store.from_url(config.database_url())
    bot = LiaisonBot(
        config,
        store,
        Secrets(secrets.token_hex(16), data_key, users["liaison"].password, None),
    )
    clients: list[E2EEClient] = []
    try:
        step = report.step("The bot starts: one cross-signed device, three encrypted rooms")
        await bot.start()
        await asyncio.wait_for(bot.synced.wait(), 60)
        for key, room in bot.rooms.by_key.items():
            report.check(step, True, f"{key}: {room.topic} (invite-only, encrypted)")

        async def client(name: str) -> E2EEClient:
            c = await E2EEClient.create(
                home[name], users[name], workdir / f"client-{name}", device_name="liaison-demo"
            )
            await cross_sign(home[name], c, {})
            await c.start()
            clients.append(c)
            return c

        admin, officer = await client("secadmin"), await client("lo-deu")
        nor, aut = await client("analyst-nor"), await client("analyst-aut")
        bot_id = users["liaison"].user_id
        step = report.step("The security administrator keeps the clearance register (in a DM)")
        dm = await open_dm(admin, bot_id)
        grants = [
            ("lo-deu", "DEU GEHEIM", "DEU"),
            ("lo-deu", "NATO SECRET", "DEU"),
            ("lo-deu", "EU SECRET", "DEU"),
            ("analyst-nor", "NATO SECRET", "NOR"),
            ("analyst-aut", "EU SECRET", "AUT"),
            ("visitor-fra", "NATO CONFIDENTIAL", "FRA"),
        ]
        for name, level, nation in grants:
            command = f'!clearance grant {users[name].user_id} "{level}" --nationality {nation}'
            await talk(admin, dm, command, "Clearance updated", timeout=60)
            report.check(step, True, f"{command}")

        step = report.step("An invite the register does not allow is refused, with the reason")
        refusal = await talk(
            admin, dm, f"!invite {users['visitor-fra'].user_id} nato-s", "may not join", timeout=60
        )
        report.show(step, "the bot answers the administrator", refusal.body)
        report.check(
            step,
            "below the room's NATO SECRET" in refusal.body,
            "refused: a NATO CONFIDENTIAL grant does not cover a NATO SECRET room",
        )

        step = report.step("Cleared people are invited and join")
        for c, key in (
            (officer, "deu"),
            (officer, "nato-s"),
            (officer, "eu-s"),
            (nor, "nato-s"),
            (aut, "eu-s"),
        ):
            await talk(admin, dm, f"!invite {c.user_id} {key}", "Invited", timeout=60)
            await c.join(await c.wait_for_invite(timeout=60), timeout=60)
            report.check(step, True, f"{c.user_id} joined {key}")

        step = report.step(
            "The German liaison officer posts tagged intelligence in the national room"
        )
        deu, nato_s, eu_s = (bot.rooms.by_key[k].room_id for k in ("deu", "nato-s", "eu-s"))
        message = (
            "[GEHEIM // REL TO NATO] [PRIORITY] Convoy of 12 vehicles near Kiel heading "
            "east #logistics"
        )
        report.show(step, "lo-deu sends in deu", message)
        aut_mark = aut.event_count(eu_s)
        receipt = await talk(officer, deu, message, "Relayed to", timeout=60)
        report.show(step, "the bot's receipt to the officer", receipt.body)
        copy = await nor.wait_for_text(nato_s, "Convoy of 12 vehicles", timeout=60)
        report.show(step, "analyst-nor reads in nato-s (decrypted)", copy.body)
        report.check(
            step,
            copy.body.startswith("NATO SECRET — originator: DEU GEHEIM // REL TO NATO"),
            "relayed to NATO SECRET with the originator's marking",
        )
        report.check(
            step,
            "Not relayed to eu-s: not releasable to AUT, CYP, IRL, MLT" in receipt.body,
            "refused for EU SECRET: Austria, Cyprus, Ireland and Malta are not in NATO",
        )
        await asyncio.sleep(1)
        report.check(
            step,
            not any("Convoy" in t for t in aut.texts(eu_s)[aut_mark:]),
            "analyst-aut's EU room received nothing",
        )

        step = report.step("Duty staff ask for the situation digest of the NATO room")
        mark = nor.event_count(nato_s)
        await talk(nor, nato_s, "!digest now", "Digest posted", timeout=60)
        digest = await nor.wait_for_text(nato_s, "Situation digest", timeout=60, after=mark)
        report.show(step, "analyst-nor reads in nato-s (decrypted)", digest.body)
        report.check(step, "Convoy of 12 vehicles" in digest.body, "the relayed item is in it")

        if receiver is not None:
            await siem_step(report, receiver, store)

        out("\n" + ("Scenario passed." if report.passed else "Scenario FAILED (see ✗ above)."))
        if linger:
            out(
                textwrap.dedent(f"""
                The homeserver keeps running until Ctrl-C. Log in with any Matrix client
                (e.g. Element: Sign in → Edit homeserver → {server.base_url}):""")
            )
            if federated:
                out(f"   (the analysts and the visitor are on NATO's server: {remote.base_url})")
            for name in ("secadmin", "lo-deu", "analyst-nor", "analyst-aut", "visitor-fra"):
                out(f"   {users[name].user_id:32}  password {users[name].password}")
            out(
                "   (verify the new session with your other devices, or trust it, to read history"
                " shared after you log in; rooms show history only from joining)"
            )
            if receiver is not None:
                out(f"   rsyslog writes the bot's audit events to {receiver.rsyslog.output}")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        return report.passed
    except Exception as exc:  # a scenario that breaks says so plainly, then cleans up
        out(f"\nScenario FAILED: {type(exc).__name__}: {exc}")
        return False
    finally:
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
        with contextlib.suppress(Exception):
            await bot.close()
        store.close()
        await asyncio.to_thread(server.stop)
        if remote is not server:
            await asyncio.to_thread(remote.stop)
        if receiver is not None:
            await asyncio.to_thread(receiver.stop)


async def siem_step(report: Report, receiver: siemdemo.Receiver, store: Store) -> None:
    """Wait for the export to catch up, then check and show what rsyslog received."""
    step = report.step("The SOC's SIEM (the local rsyslog) received the audit log")
    try:
        summary = await siemdemo.check(receiver, store)
    except siemdemo.SiemDemoError as exc:
        report.check(step, False, str(exc))
        return
    report.out(summary.line)
    report.check(step, summary.received > 0, "audit events received over TLS")
    report.check(
        step,
        summary.valid == summary.received,
        "each one a valid OCSF 1.5.0 event (the official class schema, offline)",
    )
    report.check(
        step,
        not summary.gaps and not summary.duplicates,
        "every audit id once, from the first received to the bot's newest row",
    )
    for problem in summary.problems[:5]:
        report.out(f"   ✗ {problem}")
    if summary.gaps:
        report.out(f"   ✗ missing audit ids: {summary.gaps[:20]}")
    for event in summary.samples:
        meta = event.get("metadata", {})
        report.show(
            step,
            f"audit row {meta.get('sequence')}: {event.get('class_name')}",
            siemdemo.pretty(event),
        )


def siem_missing() -> str | None:
    """Why `demo --siem` cannot run here (rsyslog, its OpenSSL driver, the OCSF schema)."""
    return siemdemo.missing()


def run_demo(
    *,
    exit_after_scenario: bool,
    federated: bool = False,
    siem: bool = False,
    out: Callable[[str], None] = print,
) -> bool:
    if siem and (reason := siem_missing()) is not None:
        out(f"error: {reason}")
        return False
    with tempfile.TemporaryDirectory(prefix="liaison-demo-") as tmp:
        return asyncio.run(
            scenario(Path(tmp), out, linger=not exit_after_scenario, federated=federated, siem=siem)
        )


__all__ = ["run_demo", "siem_missing"]
