# The two commands of the README. Both create .venv on first use and install into it.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

CHROMIUM ?= /usr/bin/chromium

.PHONY: run test lint install browser clean bench-deps node-worker

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

# What `jetdag bench` and the plots in bench/RESULTS.md need on top of the dev tools (bench/README.md).
bench-deps: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'

run: $(STAMP)
	$(BIN)/jetdag up

lint: $(STAMP)
	$(BIN)/ruff check engine actors web tests bench
	$(BIN)/ruff format --check engine actors web tests bench
	$(BIN)/mypy

# The browser tests drive Debian's chromium through Playwright; Playwright's own download is never used.
browser:
	@test -x $(CHROMIUM) || { echo "installing chromium with apt-get (for the browser tests)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# The Node.js worker of deploy/workers/node, for the conformance suite (tests/conformance). Without npm the
# suite's Node tests fail saying how to install it.
NODE_DIR := deploy/workers/node
$(NODE_DIR)/node_modules/.package-lock.json: $(NODE_DIR)/package-lock.json
	@if command -v npm >/dev/null; then cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error; \
	  else echo "npm not found: the Node worker's conformance tests will fail (apt-get install nodejs npm)"; fi

node-worker: $(NODE_DIR)/node_modules/.package-lock.json

test: lint browser node-worker
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q

clean:
	rm -rf $(VENV) .jetdag .pytest_cache .mypy_cache .ruff_cache
