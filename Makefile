# The two commands a newcomer runs: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages, installed only when missing. The demo needs mosquitto (its broker) and
# python3-venv; nothing is compiled (no gcc, no Python headers: every Python dependency
# has a wheel, on 32-bit Raspberry Pi OS from piwheels). The tests also boot a Debian in a
# container (tests/deploy/): systemd-container and debootstrap.
DEMO_APT := mosquitto
TEST_APT := systemd-container debootstrap

.PHONY: demo test test-fresh check lint typecheck schema bench system-deps test-deps venv clean

demo: $(STAMP)
	$(BIN)/edge-agent demo

test: $(STAMP) test-deps
	$(BIN)/pytest

# A newcomer's first minutes on a fresh minimal Debian 12 with only git and make: clone,
# make venv, edge-agent read and demo, in a chroot (root; ~4.5 min, ~6 min uncached).
test-fresh: $(STAMP) test-deps
	EDGE_AGENT_TEST_FRESH=1 $(BIN)/pytest tests/deploy/test_fresh_debian.py

check: $(STAMP) test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

schema: $(STAMP)
	$(BIN)/edge-agent schema > config/schema.json

# Ours vs mqtt-io 2.7.0 (installed into tests/bench/.venv-mqttio) and raw-paho floors,
# ~10 min; writes tests/bench/RESULTS.md. BENCH_QUICK=1 for a 2-minute smoke run.
bench: $(STAMP)
	$(BIN)/python -m tests.bench.run

# apt-get install the packages of $(1) that are missing (sudo when not root).
define apt_install
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	$(2) \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

# No python3 (a minimal Debian) or no venv module (Debian splits it off): python3-venv.
NEED_VENV := $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3 python3-venv";

system-deps:
	$(call apt_install,$(DEMO_APT),$(NEED_VENV))

test-deps:
	$(call apt_install,$(TEST_APT))

$(STAMP): pyproject.toml Makefile
	@$(MAKE) --no-print-directory system-deps
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python >= 3.11 is required")'
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
