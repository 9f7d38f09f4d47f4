# Switchboard: the two commands are `make demo` and `make test`. Both install what they need on a fresh
# Debian machine (run as root, or with sudo available).

SWIFT        ?= swift
# At most 16 tests at a time: all ~280 at once kept the two task threads (one per core) so busy in the first
# seconds that timers fired seconds late, and tests with time limits failed on a loaded machine.
SWIFT_TEST   := env SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH=16 $(SWIFT) test
VENV         := Interop/.venv
PYTHON       := $(VENV)/bin/python
# LNbits (a real Lightning wallet server, FakeWallet funding) in a virtual environment of its own: its
# dependency pins are not the interop peers'.
LNBITS_VENV  := Interop/.venv-lnbits
LNBITS       := lnbits==1.6.2 bitstring<4.3
APT_PACKAGES := libsecp256k1-dev libsodium-dev libssl-dev libsqlite3-dev libjemalloc-dev pkg-config python3 python3-venv postgresql
SUDO         := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test check deps venv lnbits build build-release unit interop bench fuzz clean

demo: deps build
	Scripts/demo.sh .build/debug/switchboard

# The tests that need PostgreSQL get a throw-away cluster on a loopback port (Scripts/with-postgres.sh).
test: deps venv lnbits build
	Scripts/with-postgres.sh $(MAKE) --no-print-directory check

check:
	$(SWIFT_TEST)
	SWITCHBOARD_BIN=$(CURDIR)/.build/debug/switchboard LNBITS_PYTHON=$(CURDIR)/$(LNBITS_VENV)/bin/python $(PYTHON) -m pytest -q Interop

# System packages: installed only when one is missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# The interop peers (rust-nostr's Python bindings, pytest) in a virtual environment of the project's own.
venv: $(VENV)/.installed
$(VENV)/.installed: Interop/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r Interop/requirements.txt
	touch $@

lnbits: $(LNBITS_VENV)/.installed
$(LNBITS_VENV)/.installed:
	python3 -m venv $(LNBITS_VENV)
	$(LNBITS_VENV)/bin/pip install -q $(foreach p,$(LNBITS),'$(p)')
	touch $@

build:
	$(SWIFT) build

build-release:
	$(SWIFT) build -c release

unit: deps
	Scripts/with-postgres.sh $(SWIFT_TEST)

interop: deps venv lnbits build
	SWITCHBOARD_BIN=$(CURDIR)/.build/debug/switchboard LNBITS_PYTHON=$(CURDIR)/$(LNBITS_VENV)/bin/python $(PYTHON) -m pytest -q Interop

bench: deps build-release
	.build/release/switchboard-bench crypto
	.build/release/switchboard-bench relay
	.build/release/switchboard-bench service
	.build/release/switchboard-bench bunker
	.build/release/switchboard-bench wallet
	.build/release/switchboard-bench dvm

# Fuzz each target for FUZZ_SECONDS (default 60): `make fuzz FUZZ_SECONDS=600`.
FUZZ_SECONDS ?= 60
fuzz: deps
	Fuzz/run.sh $(FUZZ_SECONDS)

clean:
	rm -rf .build .build-* $(VENV) $(LNBITS_VENV)
