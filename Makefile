# Two commands set everything up: `make run` and `make test`.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install dev run api worker migrate test lint format bench clean

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

## make run: install, migrate, serve http://127.0.0.1:8000 on embedded SQLite (API + worker);
## open for local trials (MFSERVE_AUTH=off unless set: the log line and /readyz say so)
run: migrate
	MFSERVE_AUTH=$${MFSERVE_AUTH:-off} $(PY) -m service api --with-worker

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

## make test: install the dev extras, lint, and run every test on SQLite and PostgreSQL
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
