# Two commands get a newcomer going:  make run  (serve)  and  make test  (the whole suite).
# Both create .venv with the Python found here (3.11+) and install what they need into it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: run test demo bench lint typecheck tables clean help

help:
	@echo "make run       create .venv, install, start 'consilium serve' on ./data (ARGS='--no-auth' ...)"
	@echo "make test      create .venv, install with test extras, run the whole suite"
	@echo "make demo      load the demo telemedicine network into ./data"
	@echo "make bench     run the benchmarks in bench/ (installs wrk as root when missing)"
	@echo "make lint      ruff; make typecheck: mypy"
	@echo "make tables    regenerate the tables generated from the FHIR R4 definitions"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "consilium needs Python 3.11 or newer; found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/consilium serve $(ARGS)

demo: $(VENV)/.installed
	$(BIN)/consilium demo $(ARGS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	bench/system-deps.sh
	$(BIN)/python bench/run_all.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check server tests bench

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy server

tables: $(VENV)/.installed
	$(BIN)/python -m server.generate all

clean:
	rm -rf $(VENV) build *.egg-info
