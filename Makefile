# Two commands do all the set-up on a fresh machine:
#   make train   builds .venv and trains the MNIST MLP (ARGS="..." passes flags to train.py)
#   make test    builds .venv, then lint, format check and the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: train test lint format parity bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 first: on these machines it is a CPU build on local disk; the extras'
	# torch>=2.4 range is then satisfied and nothing larger is downloaded.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[train,parity,dev]"
	touch $@

train: $(VENV)/.installed
	$(PY) train.py $(ARGS)

test: $(VENV)/.installed lint
	$(PY) -m pytest -n 2 $(ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.installed
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

parity: $(VENV)/.installed
	$(PY) -m parity $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
