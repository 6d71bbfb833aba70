"""The SIEM exporter as the bot and the CLI build it from `[siem]`: the one place that
binds the formatting half (`bot.siem`: `render`, `Markings`, `syslog_severity`) to the
transport (syslog messages over TLS) and the store.

Loaded only where `[siem]` is set (bot/app.py imports it then), so a bot without it loads
none of the export.
"""

from __future__ import annotations

from typing import Literal

from bot.config import Config, SiemConfig
from bot.metrics import Metrics
from bot.siem import formatter as formatter  # re-exported: the bot and benches bind it here
from bot.siem import syslog_severity
from bot.siem.exporter import Alert, Exporter, ExportSettings, Outbox
from bot.siem.syslog import Origin
from bot.siem.transport import TlsSyslog, TlsTarget

Format = Literal["ocsf", "cef"]


def target_of(config: Config, siem: SiemConfig) -> TlsTarget:
    """The receiver and the TLS files, their paths from the config's folder."""
    return TlsTarget(
        host=siem.host,
        port=siem.port,
        server_name=siem.tls_server_name,
        ca_file=config.path(siem.ca_file) if siem.ca_file else None,
        cert_file=config.path(siem.cert_file) if siem.cert_file else None,
        key_file=config.path(siem.key_file) if siem.key_file else None,
    )


def build_exporter(config: Config, store: Outbox, alert: Alert, metrics: Metrics) -> Exporter:
    """The exporter `[siem]` describes (the caller checked it is set)."""
    siem = config.siem
    assert siem is not None, "build_exporter needs [siem]"
    settings = ExportSettings(
        target=siem.target,
        batch=siem.batch,
        retry_max=siem.retry_max.total_seconds(),
        alert_after=siem.alert_after.total_seconds(),
        from_now=siem.start == "now",
    )
    return Exporter(
        settings,
        store,
        TlsSyslog(target_of(config, siem)),
        formatter(siem.format, siem.markings),
        syslog_severity,
        Origin.local(siem.hostname),
        alert,
        metrics,
    )
