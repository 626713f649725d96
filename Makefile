# Two commands do all the set-up on a fresh machine:
#   make train   builds .venv and trains the MNIST MLP (ARGS="..." passes flags to train.py)
#   make test    builds .venv, then lint, format check and the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
# The versions the suite last passed with (see constraints.txt); empty to resolve the newest.
CONSTRAINTS ?= constraints.txt
PIP := $(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: train test lint format parity lock clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	# torch==2.13.0 first: on these machines it is a CPU build on local disk; the extras'
	# torch>=2.4 range is then satisfied and nothing larger is downloaded.
	$(PIP) torch==2.13.0
	$(PIP) -e ".[train,parity,dev]"
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

# Moves constraints.txt to the newest releases: resolves them in .venv-lock, runs the whole
# suite there, and rewrites constraints.txt only if it passed.
lock:
	rm -rf .venv-lock
	$(MAKE) test VENV=.venv-lock CONSTRAINTS=
	{ sed -n '/^#/p' constraints.txt; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^#' | sed -E 's/\+[A-Za-z0-9.]+$$//'; \
	  .venv-lock/bin/python -m pip --version | sed -E 's/^pip ([^ ]+).*/pip==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .venv-lock .pytest_cache .ruff_cache
