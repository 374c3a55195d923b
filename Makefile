# coapbridge developer tasks.
#
#   make run     install what is missing, start a local MQTT broker if none answers on
#                127.0.0.1:1883, register demo-device, run the bridge in the foreground
#   make test    install what is missing (incl. test-only CoAP clients), run pytest;
#                extra arguments: make test PYTEST_ARGS="tests/core -x"
#   make clean   remove .venv and .tools (keeps data/, the device registry)
#
# The longer logic is in scripts/install.sh and scripts/run.sh.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
TOOLS := .tools
# Rebuilt (pip install -e) only when setup.cfg changes; lives in .venv so it goes with it.
STAMP := $(VENV)/.coapbridge-installed
COAP_CLI := $(CURDIR)/$(TOOLS)/node_modules/.bin/coap
CONFIG ?= conf/coapbridge.yaml
PYTEST_ARGS ?=
# Run all of tests/ unless PYTEST_ARGS names test paths itself.
TEST_PATHS := $(if $(filter tests% ./tests%,$(PYTEST_ARGS)),,tests)

export PYTHON VENV TOOLS CONFIG

.PHONY: help run test clean system-deps system-deps-test node-tools
# The steps depend on each other (apt-get installs npm for node-tools, ...).
.NOTPARALLEL:

help:
	@sed -n '3,8s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

run: system-deps $(STAMP)
	bash scripts/run.sh

test: system-deps-test $(STAMP) node-tools
	COAP_CLI=$(COAP_CLI) PATH="$$PATH:/usr/sbin" \
		$(VENV)/bin/python -m pytest -q $(strip $(TEST_PATHS) $(PYTEST_ARGS))

system-deps:
	bash scripts/install.sh system

system-deps-test:
	bash scripts/install.sh system --test

$(STAMP): setup.cfg
	bash scripts/install.sh venv
	touch $@

node-tools:
	bash scripts/install.sh node-tools

clean:
	rm -rf $(VENV) $(TOOLS)
