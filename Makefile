# Two commands do all the set-up on a fresh machine:
#   make train   builds .venv and trains the MNIST MLP (ARGS="..." passes flags to train.py)
#   make test    builds .venv, then lint, format check and the whole test suite
# On a GPU or TPU machine add JAX=cuda12, JAX=cuda13 or JAX=tpu (e.g. make train JAX=cuda12):
# the set-up then also installs that build of JAX (pyproject's extra of the same name, at the
# jax version of constraints.txt). Changing JAX re-runs the set-up, which removes the other
# builds' plugins from .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
JAX ?= cpu
JAX_BUILDS := cpu cuda12 cuda13 tpu
ifneq ($(filter-out $(JAX_BUILDS),$(JAX))$(words $(JAX)),1)
$(error JAX=$(JAX) is not a JAX build of this project; use one of: $(JAX_BUILDS) (e.g. make train JAX=cuda12))
endif
# The versions the suite last passed with (see constraints.txt); empty to resolve the newest.
CONSTRAINTS ?= constraints.txt
PIP := $(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# The set-up's stamp names the JAX build it installed (plain .installed for cpu).
STAMP := $(VENV)/.installed$(if $(filter-out cpu,$(JAX)),-$(JAX))
# What each build adds to jax and jaxlib; the set-up uninstalls the others' packages.
JAX_PACKAGES_cuda12 := jax-cuda12-plugin jax-cuda12-pjrt
JAX_PACKAGES_cuda13 := jax-cuda13-plugin jax-cuda13-pjrt
JAX_PACKAGES_tpu := libtpu
OTHER_JAX_PACKAGES := $(filter-out $(JAX_PACKAGES_$(JAX)),$(foreach b,$(JAX_BUILDS),$(JAX_PACKAGES_$(b))))

.PHONY: train test lint format parity lock clean accel-check

# What re-runs the set-up when it changes (tests/test_readme.py empties it: the suite runs inside
# the environment it would rebuild).
SETUP_DEPS ?= pyproject.toml $(CONSTRAINTS)

$(STAMP): $(SETUP_DEPS)
	rm -f $(VENV)/.installed $(VENV)/.installed-*
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	# torch==2.13.0 first: on these machines it is a CPU build on local disk; the extras'
	# torch>=2.13 range is then satisfied and nothing larger is downloaded.
	$(PIP) torch==2.13.0
	$(PY) -m pip uninstall -qq -y $(OTHER_JAX_PACKAGES)
	$(PIP) -e ".[train,parity,dev,$(JAX)]"
	touch $@

train: $(STAMP)
	$(PY) train.py $(ARGS)

test: $(STAMP) lint
	$(PY) -m pytest -n 2 $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

parity: $(STAMP)
	$(PY) -m parity $(ARGS)

# Moves constraints.txt to the newest releases: resolves them in .venv-lock, runs the whole
# suite there, and rewrites constraints.txt only if it passed.
lock:
	rm -rf .venv-lock
	$(MAKE) test VENV=.venv-lock CONSTRAINTS= JAX=cpu
	{ sed -n '/^#/p' constraints.txt; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable | grep -v -e '^#' -e '^pip==' | sed -E 's/\+[A-Za-z0-9.]+$$//'; \
	  .venv-lock/bin/python -m pip --version | sed -E 's/^pip ([^ ]+).*/pip==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

# Compiles the losses and the training step for an NVIDIA H100 and TPU v5e chips without either
# (tests/test_compiled.py, then the traffic table of python -m benchmarks.compiled). Needs the
# CUDA plugin and libtpu (.venv-accel is about 8 GB with the CUDA libraries), so it has its own
# environment and is not part of make test.
ACCEL_VENV ?= .venv-accel
ACCEL_PY := $(ACCEL_VENV)/bin/python

accel-check: $(ACCEL_VENV)/.installed
	JAX_PLATFORMS=cpu $(ACCEL_PY) -m pytest -q tests/test_compiled.py $(ARGS)
	JAX_PLATFORMS=cpu $(ACCEL_PY) -m benchmarks.compiled

$(ACCEL_VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(ACCEL_VENV)
	$(ACCEL_PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) --upgrade pip
	$(ACCEL_PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[train,dev,cuda12,tpu]"
	touch $@

clean:
	rm -rf $(VENV) .venv-lock $(ACCEL_VENV) .pytest_cache .ruff_cache
