# coapbridge developer tasks.
#
#   make run     install what is missing, start a local MQTT broker if none answers on
#                127.0.0.1:1883, register demo-device, run the bridge in the foreground
#   make test    install what is missing (incl. test-only CoAP clients), build the wheel
#                and sdist, install the wheel into a fresh virtualenv and run pytest (the
#                whole suite smoke-tests that install too: tests/artifact); the whole suite
#                runs the tests marked long beside it (scripts/test.sh; LONG_TESTS=1 with
#                PYTEST_ARGS too);
#                extra arguments: make test PYTEST_ARGS="tests/core -x"
#   make test-long  only the tests that take minutes (#24's 30 s x 10 PSM run: 5 minutes)
#   make artifact    only the wheel and sdist (.tools/artifact/dist) and their virtualenv
#   make test-image  build the Docker image and run tests/artifact against it
#   make bench   benchmarks (QUICK=1: a few minutes); results in bench/results/
#   make clean   remove the virtualenvs and .tools (keeps data/, the device registry)
#   make docs    docs/configuration.md and conf/coapbridge.yaml from the settings' schema
#
# PYTHON=pypy3 runs the bridge (and the tests) on PyPy, in .venv-pypy3.
# The longer logic is in scripts/install.sh and scripts/run.sh.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
# .venv is always CPython: the tools, the load generator, the plots.
VENV := .venv
# The interpreter that runs the bridge: .venv itself, or one per other interpreter.
PYVENV := $(if $(filter python3,$(PYTHON)),$(VENV),.venv-$(notdir $(PYTHON)))
TOOLS := .tools
# Rebuilt (pip install -e) only when setup.cfg changes; lives in the venv so it goes with it.
STAMP := $(VENV)/.coapbridge-installed
PYSTAMP := $(PYVENV)/.coapbridge-installed
NODE_COAP_CLI := $(CURDIR)/$(TOOLS)/node_modules/.bin/coap
CONFIG ?= conf/coapbridge.yaml
PYTEST_ARGS ?=
# Run all of tests/ unless PYTEST_ARGS names test paths itself.
TEST_PATHS := $(if $(filter tests% ./tests%,$(PYTEST_ARGS)),,tests)
# The installed artifact (scripts/install.sh artifact): built for a run of the whole suite,
# or one that names tests/artifact; its smoke suite is skipped in other runs.
ARTIFACT := $(CURDIR)/$(TOOLS)/artifact
WITH_ARTIFACT := $(if $(TEST_PATHS),1,$(findstring tests/artifact,$(PYTEST_ARGS)))
# the tests marked long run beside the suite when make test runs it all (no PYTEST_ARGS);
# make test LONG_TESTS=1 PYTEST_ARGS=... runs them beside a part too
LONG_TESTS ?= $(if $(strip $(PYTEST_ARGS)),,1)

export PYTHON TOOLS CONFIG

.PHONY: help run test test-long test-image artifact bench clean docs system-deps system-deps-test node-tools
# The steps depend on each other (apt-get installs npm for node-tools, ...).
.NOTPARALLEL:

help:
	@sed -n '3,/^$$/s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

run: system-deps $(PYSTAMP)
	VENV=$(PYVENV) bash scripts/run.sh

test: system-deps-test $(PYSTAMP) node-tools $(if $(WITH_ARTIFACT),artifact)
	NODE_COAP_CLI=$(NODE_COAP_CLI) PATH="$$PATH:/usr/sbin" \
		$(if $(WITH_ARTIFACT),TEST_ARTIFACT_VENV=$(ARTIFACT)/venv TEST_ARTIFACT_DIST=$(ARTIFACT)/dist) \
		LONG=$(LONG_TESTS) bash scripts/test.sh $(PYVENV)/bin/python \
		$(strip $(TEST_PATHS) $(PYTEST_ARGS))

test-long: system-deps-test $(PYSTAMP) node-tools
	RUN_LONG_TESTS=1 PATH="$$PATH:/usr/sbin" \
		$(PYVENV)/bin/python -m pytest -q -m long tests/integration $(PYTEST_ARGS)

artifact: $(PYSTAMP)
	VENV=$(PYVENV) bash scripts/install.sh artifact

# The same smoke suite with the bridge in a container of the image; one line and success
# where no Docker engine answers (a docker client alone is not enough).
test-image: system-deps-test $(PYSTAMP)
	@if ! docker info >/dev/null 2>&1; then \
		echo "make test-image: skipped: no Docker engine answers here (docker info failed)"; \
	else \
		docker build -t coapbridge:test . && \
		PATH="$$PATH:/usr/sbin" TEST_ARTIFACT_IMAGE=coapbridge:test \
			$(PYVENV)/bin/python -m pytest -q tests/artifact $(PYTEST_ARGS); \
	fi

bench: system-deps $(STAMP) $(PYSTAMP)
	$(VENV)/bin/python -m pip install -q matplotlib
	# the baseline servers' stock txThings (the bridge itself no longer uses it)
	$(PYVENV)/bin/python -m pip install -q txThings==0.3.0
	PATH="$$PATH:/usr/sbin" $(VENV)/bin/python bench/run.py $(if $(QUICK),--quick) \
		--server-python $(PYVENV)/bin/python \
		--name results$(if $(filter python3,$(PYTHON)),,-$(notdir $(PYTHON)))$(if $(QUICK),-quick)

system-deps:
	bash scripts/install.sh system

system-deps-test:
	bash scripts/install.sh system --test

$(STAMP): setup.cfg
	PYTHON=python3 VENV=$(VENV) bash scripts/install.sh venv
	touch $@

ifneq ($(PYVENV),$(VENV))
$(PYSTAMP): setup.cfg
	VENV=$(PYVENV) bash scripts/install.sh venv
	touch $@
endif

docs: $(STAMP)
	$(VENV)/bin/coapbridge config doc > docs/configuration.md
	$(VENV)/bin/coapbridge config example > conf/coapbridge.yaml
	$(VENV)/bin/python scripts/kubernetes_configmap.py

node-tools:
	bash scripts/install.sh node-tools

clean:
	rm -rf $(VENV) .venv-* $(TOOLS)
