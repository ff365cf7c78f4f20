# The two set-up commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config/bridge.toml
# Debian packages the test suite drives as real peers (installed by `make test` when missing);
# prometheus for its promtool (the alert rules and scrape config are checked with it);
# kamailio as a carrier's record-routing proxy in front of the bridge.
DEB_PACKAGES ?= sip-tester baresip chromium espeak-ng rtpengine-daemon prometheus kamailio
PYTEST_ARGS ?=

.PHONY: run test install install-test deb-packages lint bench check-config clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bridge needs Python 3.11 or newer")'
	@# Debian splits venv/ensurepip out of python3: install it when it is missing.
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when the project description changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(BIN)/bridge run --config $(CONFIG)

check-config: install
	$(BIN)/bridge check-config --config $(CONFIG)

deb-packages:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

lint: install-test
	$(BIN)/ruff check src tests bench sim
	$(BIN)/ruff format --check src tests bench sim

test: install-test deb-packages lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/routing.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
