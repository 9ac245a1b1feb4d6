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

.PHONY: demo test test-fresh test-ha check lint typecheck schema bench system-deps test-deps venv clean

demo: $(STAMP)
	$(BIN)/edge-agent demo

test: $(STAMP) test-deps
	$(BIN)/pytest

# A newcomer's first minutes on a fresh minimal Debian 12 with only git and make: clone,
# make venv, edge-agent read and demo, in a chroot (root; ~4.5 min, ~6 min uncached).
test-fresh: $(STAMP) test-deps
	EDGE_AGENT_TEST_FRESH=1 $(BIN)/pytest tests/deploy/test_fresh_debian.py

# Against a real Home Assistant Core (tests/ha/, minutes; not part of `make test`). Its venv
# lives outside the repository and is built once (~5 min): homeassistant 2025.4.4 is the
# newest whose Python requirement (3.13.0 from pyenv) this machine meets; the frontend and
# isal are requirements of integrations HA always loads, installed here because the tests
# run HA with --skip-pip.
HA_VENV ?= /var/cache/edge-agent-tests/ha-venv
HA_PYTHON ?= $(shell pyenv root 2>/dev/null)/versions/3.13.0/bin/python
HA_PACKAGES := homeassistant==2025.4.4 paho-mqtt==2.1.0 home-assistant-frontend==20250411.0 isal==1.7.1

test-ha: $(STAMP) $(HA_VENV)/.installed
	EDGE_AGENT_TEST_HA=1 EDGE_AGENT_HA_VENV=$(HA_VENV) $(BIN)/pytest tests/ha -p no:cacheprovider -v -s

$(HA_VENV)/.installed:
	[ -x $(HA_PYTHON) ] || { echo "Home Assistant needs Python 3.13: set HA_PYTHON"; exit 1; }
	[ -x $(HA_VENV)/bin/python ] || $(HA_PYTHON) -m venv $(HA_VENV)
	$(HA_VENV)/bin/pip install -q $(HA_PACKAGES)
	touch $@

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
	$(BIN)/pip install -q -e '.[dev,ed25519]'
	touch $(STAMP)

venv: $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
