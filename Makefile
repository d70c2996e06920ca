# Two entry points (see README): `make serve` and `make test`. Everything else is a step of those.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: setup setup-dev setup-external serve test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: the CPU build. Letting another package pull torch would fetch a CUDA build.
$(VENV)/.torch: $(BIN)/python
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Label Studio (own venv) and Chromium for the external tests; skipped where they cannot be installed.
setup-external: setup
	bash scripts/setup_external.sh

serve: setup
	$(BIN)/kiwi serve --bootstrap

test: setup setup-external
	$(BIN)/ruff check recommender tests bench scripts
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check recommender tests bench scripts
	$(BIN)/ruff format --check recommender tests bench scripts

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
