"""A real rsyslog receiver for the SIEM export's tests and benchmark: `rsyslogd -n` run as
the calling user, in a folder of its own (its `workDirectory`, config, pid file and output),
with no system sockets and no system config: one TLS listener (imtcp with the `ossl` stream
driver, the OpenSSL one) on a free loopback port, which takes RFC 5425's octet-counted
frames by default, and one action that writes each message's MSG as a line (omfile,
template `%msg%`).

The ruleset's queue is Direct: imtcp hands each message to omfile, which writes it at the
end of each batch (`flushOnTXEnd`), before the listener reads on. So once rsyslog has
answered our close_notify, every message before it is in the file, and a receiver killed
afterwards has lost nothing we were told it read.

Tooling (bot/devtools): never imported by the running bot.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

RSYSLOGD = shutil.which("rsyslogd") or next(
    (p for p in ("/usr/sbin/rsyslogd", "/sbin/rsyslogd") if os.access(p, os.X_OK)), None
)
# Where distributions put rsyslog's loadable modules.
MODULE_DIRS = ("/usr/lib/*/rsyslog", "/usr/lib/rsyslog", "/usr/lib64/rsyslog")
START_TIMEOUT_S = 10.0


def missing() -> str | None:
    """What is missing to run rsyslog here (rsyslogd, its ossl driver), or None."""
    if RSYSLOGD is None:
        return "rsyslogd is not installed (apt-get install rsyslog)"
    drivers = [p for d in MODULE_DIRS for p in glob.glob(f"{d}/lmnsd_ossl.so")]
    if not drivers:
        return (
            "rsyslog's ossl stream driver (lmnsd_ossl.so) is not installed "
            "(apt-get install rsyslog-openssl)"
        )
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port` (the kernel's socket table: looking
    does not open a connection, which rsyslog would log as a failed handshake)."""
    wanted = f"0100007F:{port:04X}"
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0
    return any(row.split()[1] == wanted and row.split()[3] == "0A" for row in table if row.strip())


@dataclass
class Rsyslog:
    """One rsyslogd; `start` and `stop` may be repeated (same port, same output file)."""

    folder: Path
    cert: Path
    key: Path
    ca: Path
    # "anon": any client; "x509/certvalid": a client certificate from `ca` is required
    auth_mode: str = "anon"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def output(self) -> Path:
        return self.folder / "received.log"

    @property
    def log(self) -> Path:
        return self.folder / "rsyslogd.log"

    def config(self) -> str:
        work = self.folder / "work"
        work.mkdir(parents=True, exist_ok=True)
        return f"""
global(
  workDirectory="{work}"
  maxMessageSize="64k"
  defaultNetstreamDriverCAFile="{self.ca}"
  defaultNetstreamDriverCertFile="{self.cert}"
  defaultNetstreamDriverKeyFile="{self.key}"
)
module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1"
       StreamDriver.AuthMode="{self.auth_mode}")
template(name="msg-line" type="string" string="%msg%\\n")
ruleset(name="siem" queue.type="Direct") {{
  action(type="omfile" file="{self.output}" template="msg-line" flushOnTXEnd="on")
}}
input(type="imtcp" address="127.0.0.1" port="{self.port}" ruleset="siem")
"""

    def start(self) -> None:
        assert RSYSLOGD is not None, "rsyslogd is not installed (missing() says so)"
        assert self.process is None, "already running"
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "rsyslog.conf"
        conf.write_text(self.config())
        pidfile = self.folder / "rsyslogd.pid"
        pidfile.unlink(missing_ok=True)  # one a SIGKILL left behind
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(conf), "-i", str(pidfile)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not listening(self.port):  # readiness, with a deadline
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise RuntimeError(
                    f"rsyslogd did not listen on port {self.port}: {self.log.read_text()[-2000:]}"
                )
            time.sleep(0.02)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
        process.wait(timeout=15)

    def lines(self) -> list[str]:
        """The MSG of every message received, in the order written."""
        if not self.output.exists():
            return []
        return self.output.read_text(encoding="ascii").splitlines()
