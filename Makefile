# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-test

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(STAMP)
	@echo "The interactive demo (throwaway Synapse, rooms, relay, digest) is not built yet."
	@echo "What exists today is the policy core and its CLI; here is its help:"
	$(BIN)/liaison-bot --help
	$(BIN)/liaison-bot label parse "nato secret//rel to eu"

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict policy

test: lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/decision.py
	$(BIN)/python bench/startup.py 20
	$(BIN)/python bench/relay.py 100
	$(BIN)/python bench/digest.py 10000

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
