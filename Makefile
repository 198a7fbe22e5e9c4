# Mega Movie: `make run` sets up and starts the portal; `make test` sets up and runs the tests.
# Every install step lives here, so a fresh Debian/Ubuntu machine needs nothing else.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# command:Debian package, installed only when the command is missing. Running the portal
# needs only ffmpeg and npm (for the player's assets); the tests and benchmarks add Chromium
# (browser journeys), nginx + wrk (the benchmark peer and the deployment test's proxy, with a
# throwaway certificate from openssl) and PostgreSQL (the database tests), so
# someone who only wants to watch the demo never downloads a browser.
RUN_APT_NEEDS  := ffmpeg:ffmpeg ffprobe:ffmpeg npm:npm
TEST_APT_NEEDS := chromium:chromium nginx:nginx-light wrk:wrk pg_ctlcluster:postgresql \
                  openssl:openssl
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup system-deps test-system-deps python-deps assets run test lint bench lock migration clean

setup: system-deps python-deps assets

# Install the Debian packages of the `command:package` pairs in $(1) whose command is missing.
define apt_install
	@missing=""; for need in $(1); do \
	  command -v $${need%%:*} >/dev/null 2>&1 || missing="$$missing $${need#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi
endef

# What running needs: ffmpeg for media, npm for the player's assets.
system-deps:
	$(call apt_install,$(RUN_APT_NEEDS))

# What only the tests and benchmarks need: Chromium, nginx, wrk, PostgreSQL.
test-system-deps: system-deps
	$(call apt_install,$(TEST_APT_NEEDS))

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# requirements.lock pins every Python package (made by `make lock`); the project itself is
# installed editable on top, without touching the pins.
$(VENV)/.installed: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

python-deps: $(VENV)/.installed

# hls.js, tus-js-client and uPlot come from npm with package-lock.json; never committed.
static/vendor/.installed: package.json package-lock.json scripts/vendor.mjs
	npm ci --no-audit --no-fund
	node scripts/vendor.mjs
	touch $@

assets: static/vendor/.installed

run: setup
	$(BIN)/megamovie serve --demo --host $(HOST) --port $(PORT)

test: setup test-system-deps
	bash .ci/services
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/deptry .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: python-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/deptry .

bench: setup test-system-deps
	bash .ci/services
	$(BIN)/python benchmarks/vault.py
	$(BIN)/python benchmarks/transcode.py
	$(BIN)/python benchmarks/ready.py
	$(BIN)/python benchmarks/first_frame.py
	$(BIN)/python benchmarks/stream.py
	$(BIN)/python benchmarks/catalog.py
	$(BIN)/python benchmarks/launch.py
	$(BIN)/python benchmarks/ingest.py

lock: | $(BIN)/python
	$(BIN)/pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra dev -o requirements.lock

# A new Alembic revision after changing portal/db.py: make migration MESSAGE="add x"
migration: python-deps
	$(BIN)/python scripts/new_migration.py "$(MESSAGE)"

clean:
	rm -rf $(VENV) node_modules static/vendor .pytest_cache
