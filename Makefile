# USER — the two commands a researcher needs are `make demo` and `make test`;
# both set up what they need first, idempotently.

PYTHON ?= python3
PYTHON312 ?= python3.12
VENV   ?= .venv
BIN    := $(VENV)/bin
# Re-install only when pyproject.toml (or the checkout's path, for the editable
# install) changed: torch is large and must not be fetched again for nothing.
SETUP_KEY := $(shell (cat pyproject.toml; pwd) | sha256sum | cut -c1-16)
STAMP     := $(VENV)/.user-setup-$(SETUP_KEY)
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup jars browser docker test test-docker test-unit lint demo broker-start broker-stop clean help suites

help:
	@echo "make demo   — start the broker, create the topics and run the demo"
	@echo "make test   — set up, start a broker if none answers, run the whole suite"
	@echo "make lint   — ruff, strict mypy on schemas/ and topics/, import layering"
	@echo "make setup  — virtualenv + editable install + Kafka jars (idempotent)"

setup: $(STAMP) jars

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[dev]'
	@rm -f $(VENV)/.user-setup-*
	@touch $@

jars: $(STAMP)
	@$(BIN)/userctl broker classpath >/dev/null

# The browser tests drive Debian's chromium; CI runs as root on a fresh machine.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Third-party task suites (Meta-World, gymnasium-robotics, gym-hil) pin an older MuJoCo than
# USER's, so they get a Python 3.12 venv of their own inside USER's (cached with it by CI);
# the robot adapters find it there (agents/sim/suites.py).
SUITES := $(VENV)/suites
SUITES_STAMP := $(SUITES)/.user-suites
suites: $(SUITES_STAMP)

$(SUITES_STAMP): infra/suites/requirements.txt | $(STAMP)
	@test -x $(SUITES)/bin/python || PYENV_VERSION=$$(pyenv versions --bare 2>/dev/null | grep '^3\.12' | tail -1) \
	  $(PYTHON312) -m venv $(SUITES)
	$(SUITES)/bin/python -m pip install --quiet --progress-bar off -r infra/suites/requirements.txt
	@touch $@

# The docker e2e tier (tests/e2e/test_docker_sites.py) needs Debian's Docker engine:
# installed and started like chromium above (infra/ci/docker.sh, idempotent).
docker:
	bash infra/ci/docker.sh

test: setup browser suites docker
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Only the docker e2e tier (two sites + cloud on Docker networks under faults; images
# built by the test, cached by content).
test-docker: setup docker
	$(BIN)/python -m pytest -m docker tests/e2e/test_docker_sites.py $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy schemas topics
	$(BIN)/lint-imports

demo: setup
	$(BIN)/userctl demo $(DEMO_ARGS)

broker-start: setup
	$(BIN)/userctl broker start

broker-stop: $(STAMP)
	$(BIN)/userctl broker stop

clean:
	-$(BIN)/userctl broker stop
	rm -rf .user .pytest_cache .mypy_cache .ruff_cache .hypothesis
