# Two commands set everything up: `make run` and `make test`.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install dev run api worker migrate test lint format bench clean vendor browser

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first, pinned, so that installing the project never pulls a different build
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed clients/python/pyproject.toml
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q -e clients/python
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

migrate: install
	$(PY) -m service migrate

## make run: install, migrate, serve http://127.0.0.1:8000 on embedded SQLite (API + worker)
run: migrate
	$(PY) -m service api --with-worker

api: migrate
	$(PY) -m service api

worker: migrate
	$(PY) -m service worker

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict service
	$(VENV)/bin/mypy --strict clients/python/mfserve_client

format: dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# the dashboard's browser tests drive Debian's chromium; installed once, only where it is missing
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x /usr/bin/chromium || { $(SUDO) apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

## make test: install the dev extras, lint, and run every test on SQLite and PostgreSQL
test: lint browser
	$(PY) -m pytest $(PYTEST_ARGS)

## make vendor: refresh the dashboard's vendored npm builds from service/web/package-lock.json
WEB := service/web
VENDOR := $(WEB)/static/vendor
vendor:
	cd $(WEB) && npm ci --ignore-scripts --no-audit --no-fund
	mkdir -p $(VENDOR)
	cp $(WEB)/node_modules/chart.js/dist/chart.umd.min.js $(VENDOR)/chart.umd.min.js
	cp $(WEB)/node_modules/chart.js/LICENSE.md $(VENDOR)/chart.js.LICENSE.md
	cp $(WEB)/node_modules/@kurkle/color/LICENSE.md $(VENDOR)/kurkle-color.LICENSE.md
	cp $(WEB)/node_modules/@picocss/pico/css/pico.min.css $(VENDOR)/pico.min.css
	cp $(WEB)/node_modules/@picocss/pico/LICENSE.md $(VENDOR)/pico.LICENSE.md

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
