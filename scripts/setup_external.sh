#!/usr/bin/env bash
# Installs what the external tests start: a real Label Studio (own venv, it pins its own Django and
# friends) and Debian's Chromium. Best effort: where either cannot be installed, the tests that need
# it skip and say why.
set -uo pipefail
cd "$(dirname "$0")/.."
LS_VERSION="${LS_VERSION:-1.23.2}"
LS_VENV=".cache/labelstudio-venv"

if [ ! -x "$LS_VENV/bin/label-studio" ]; then
  echo "setting up Label Studio $LS_VERSION in $LS_VENV (about a minute)"
  mkdir -p .cache
  { python3.11 -m venv "$LS_VENV" \
      && "$LS_VENV/bin/pip" install --quiet --upgrade pip \
      && "$LS_VENV/bin/pip" install --quiet "label-studio==$LS_VERSION"; } \
    || { echo "Label Studio could not be installed; its end-to-end test will skip"; rm -rf "$LS_VENV"; }
fi

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian chromium for the report rendering test"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "chromium could not be installed; the report rendering test will skip"
  else
    echo "chromium is absent and cannot be installed here; the report rendering test will skip"
  fi
fi
exit 0
