# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-test

.PHONY: demo siem-demo test lint typecheck mutants unit bench clean lock wheel wheelhouse

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

DEMO_STAMP := $(VENV)/.installed-demo

$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $@

demo: $(DEMO_STAMP)
	$(BIN)/liaison-bot demo

# The demo with its audit log exported to a local rsyslog over TLS, checked after the
# scenario (needs the rsyslog and rsyslog-openssl packages).
siem-demo: $(DEMO_STAMP)
	$(BIN)/liaison-bot demo --siem

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict policy commands bot tests

# One-line mutations of the guards behind the "never" claims; each must fail its tests.
mutants: $(STAMP)
	$(BIN)/python -m tests.mutants

test: lint typecheck mutants
	$(BIN)/pytest

# The PostgreSQL the failover benchmark (and the database crypto store's relay figures) use.
BENCH_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

bench: $(STAMP)
	$(BIN)/python bench/decision.py
	$(BIN)/python bench/digest.py 10000
	$(BIN)/python bench/chart.py 1000
	$(BIN)/python bench/startup.py 20
	$(BIN)/python bench/relay.py 100
	$(BIN)/python bench/relay.py 50 --federated
	$(BIN)/python bench/release.py 50
	$(BIN)/python bench/throughput.py 50 5
	$(BIN)/python bench/rooms.py 1000 100
	$(BIN)/python bench/gate.py 100
	$(BIN)/python bench/relay.py 100 --crypto-store database --database-url $(BENCH_DATABASE_URL)
	$(BIN)/python bench/cryptostore.py --database-url $(BENCH_DATABASE_URL)
	$(BIN)/python bench/failover.py 5 --database-url $(BENCH_DATABASE_URL)
	$(BIN)/python bench/siem.py 20000
	$(BIN)/python bench/siem_overhead.py 50 5

# ---------------------------------------------------------------- shipping (docs/install.md)

# The exact, hashed versions a production install of the bot uses ([bot,postgres], every
# platform, Python 3.11), resolved by a pinned uv in a throwaway virtual environment so the
# result depends on pyproject.toml and the index only, not on what this machine has.
UV_VERSION ?= 0.13.8
LOCK       := requirements.lock
DIST       := dist
WHEELHOUSE := $(DIST)/wheelhouse

# dist/ ignores itself (as a venv does): built files are never committed by accident.
$(DIST)/.gitignore:
	mkdir -p $(DIST)
	echo '*' > $@

lock: $(DIST)/.gitignore
	rm -rf $(DIST)/.lockvenv
	$(PYTHON) -m venv $(DIST)/.lockvenv
	$(DIST)/.lockvenv/bin/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(DIST)/.lockvenv/bin/uv pip compile pyproject.toml --quiet --extra bot --extra postgres \
		--python-version 3.11 --universal --generate-hashes \
		--custom-compile-command 'make lock' -o $(LOCK)
	rm -rf $(DIST)/.lockvenv

# dist/liaison_bot-<version>-py3-none-any.whl, built from this tree without its dependencies.
# setuptools' build/ folder is removed before and after: a module deleted from the tree but
# left in a stale build/lib would otherwise still ship.
wheel: $(DIST)/.gitignore
	rm -rf build $(DIST)/liaison_bot-*.whl
	$(PYTHON) -m pip wheel --quiet --no-deps --wheel-dir $(DIST) .
	rm -rf build

# Every locked dependency as a wheel for this machine's platform and Python (sources built
# here), each download checked against the lock's hashes, plus the bot's own wheel and a
# requirements.txt pinning every shipped file by hash: copy dist/wheelhouse to a machine
# without internet (docs/install.md).
wheelhouse: wheel
	rm -rf $(WHEELHOUSE)
	$(PYTHON) -m pip wheel --quiet --require-hashes -r $(LOCK) --wheel-dir $(WHEELHOUSE)
	cp $(DIST)/liaison_bot-*.whl $(WHEELHOUSE)/
	$(PYTHON) deploy/wheelhouse_lock.py $(WHEELHOUSE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis $(DIST) build
