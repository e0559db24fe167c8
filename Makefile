# Developer entry points. `make test` is what CI runs (.ci/run).
#   make venv    create .venv and install torch + this package with its test extras
#   make test    the test suite, offline, on CPU (PYTEST_ARGS="-k cli -x" to narrow it)
#   make demo    harden the shipped demo base on the embedded CIFAR-10 subset
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

.PHONY: venv test demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[test]'
	touch $@

test: venv
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

demo: venv
	HF_HUB_OFFLINE=1 $(VENV)/bin/sodef harden sodef_cli/assets/demo_base.safetensors --recipe recipes/demo.toml --out runs/demo/hardened.safetensors
# TODO(demo): append the attack and report steps here, as further recipe lines of `demo`
# (e.g. `sodef attack runs/demo/hardened.safetensors --data demo ...`, then the report of its results).
