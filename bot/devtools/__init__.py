"""Tooling around the bot, never part of it: a throwaway Synapse (`devserver`), a person's
E2EE client (`e2ee_client`), the demo (`demo`), and the bot-in-a-test-environment and relay
scenario that the tests and the benchmarks share (`botenv`, `scenario`).

The running bot imports nothing from here; the CLI imports `demo` only for `liaison-bot
demo`. It ships in the package so that `make demo` and `make bench` work from an install.
"""
