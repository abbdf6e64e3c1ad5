# The README's two commands: `make reproduce` (the toy study into results/toy/) and `make test` (every test).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PARAMS ?= params/toy.yaml
# One torch thread per process: the toy MLP and the tiny pipelines are too small to gain from more, and on a 2-core
# machine two threads per process made training ~10x slower (measured). GPU runs do not depend on it.
export OMP_NUM_THREADS ?= 1

.PHONY: install reproduce test unit nbval browser-deps bench clean-smoke study

# Create .venv when missing and install the pinned dependencies (requirements.txt is the one place they are pinned).
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

# The main job: notebooks 00-07 on the embedded toy default, executed into results/<run>/notebooks/.
reproduce: install
	$(PY) -m lib.reproduce $(PARAMS)

# Headless Chromium for the real-browser test of the gamma explorer (Debian's package; Playwright drives it).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

unit: install
	$(PY) -m pytest tests -q -p no:randomly --durations=10

# nbval re-executes the committed notebooks (small default parameters) and compares the NBVAL_CHECK_OUTPUT cells.
nbval: install
	rm -rf results/smoke
	$(PY) -m pytest --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks -q -p no:cacheprovider

test: install browser-deps
	$(MAKE) --no-print-directory unit
	$(MAKE) --no-print-directory nbval

bench: install
	$(PY) -m lib.bench

# The user study of the AIG paper (A.4): serve a run's stored samples to participants; votes in <run>/study/votes.sqlite
#   make study RUN=results/sd14_pickscore PAIRS=aig:power:2,draft HOST=0.0.0.0
RUN ?= results/smoke_sd
PAIRS ?= aig:power:2,draft
HOST ?= 127.0.0.1
study: install
	$(PY) -m lib.study serve $(RUN) --pairs $(PAIRS) --host $(HOST)
