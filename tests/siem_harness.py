"""The real rsyslog the SIEM export's tests deliver to (bot/devtools/rsyslog.py: `rsyslogd
-n` as the test's user, in a folder of its own, a TLS listener with the ossl driver on a
free loopback port, each message's MSG written as a line), and a visible skip where
rsyslogd or its ossl driver is missing (`make test` on CI installs both: `.ci/run`).

The receiver writes a message before it reads on (Direct queue), so the tests read its
file as soon as the exporter's cursor has moved, without waiting for it: a confirmed batch
must be there already.
"""

from __future__ import annotations

import pytest

from bot.devtools.rsyslog import Rsyslog, missing

__all__ = ["Rsyslog", "require_rsyslog", "skip_reason"]


def skip_reason() -> str | None:
    reason = missing()
    return None if reason is None else f"rsyslog receiver tests skipped: {reason}"


def require_rsyslog() -> None:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
