# Developer entry points. `make test` is what CI runs (.ci/run).
#   make venv    create .venv and install torch + this package with its test and export extras
#   make test    ruff (lint + format check), then the test suite, offline, on CPU (PYTEST_ARGS="-k cli -x")
#   make lint    ruff alone (configured in pyproject.toml, line length 120)
#   make demo    harden the shipped demo base on the embedded CIFAR-10 subset, attack it, report
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# the stamp is older than pyproject.toml after any edit to it, which re-runs the install
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv test lint demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[test,export]'
	touch $@

test: venv lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check sodef_cli tests benchmarks
	$(VENV)/bin/ruff format --check sodef_cli tests benchmarks

DEMO := runs/demo
# the adaptive attacks of the hardening ablation (a linear-head model has no ODE to attack); reduced budgets the report names
DEMO_ATTACKS := apgd-ce,apgd-t,transfer-apgd-ce,transfer-pgd,feature,square

demo: venv
	HF_HUB_OFFLINE=1 $(VENV)/bin/sodef harden --recipe recipes/demo.toml --out $(DEMO)/hardened.safetensors
	rm -f $(DEMO)/results.json
	HF_HUB_OFFLINE=1 $(VENV)/bin/sodef attack $(DEMO)/hardened.safetensors --data demo --n 200 --attacks $(DEMO_ATTACKS) \
		--steps 20 --queries 500 --out $(DEMO)/results.json --json > $(DEMO)/summary.json
	HF_HUB_OFFLINE=1 $(VENV)/bin/sodef report $(DEMO)/hardened.safetensors
	HF_HUB_OFFLINE=1 $(VENV)/bin/sodef report $(DEMO)/results.json
	HF_HUB_OFFLINE=1 $(VENV)/bin/sodef report $(DEMO)/results.json --out $(DEMO)/report.md
