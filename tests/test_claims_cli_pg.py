"""The offline CLI claims of test_claims_cli.py on PostgreSQL: the CLI process reads the
bot's register and audit log from the server the config names."""

from __future__ import annotations

from tests.test_claims_cli import (
    test_cli_audit_verify_names_the_tampered_row,
    test_cli_revoke_and_list_change_the_bots_register,
)

BOT_DATABASE = "postgresql"

__all__ = [
    "test_cli_audit_verify_names_the_tampered_row",
    "test_cli_revoke_and_list_change_the_bots_register",
]
