#!/usr/bin/env bash
# Installs what the external tests start: a real Label Studio (own venv, it pins its own Django and
# friends) and Debian's Chromium. Where either cannot be installed, the tests that need it skip and
# say why; in CI (CI=true) this fails instead, with one line naming each component that is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
LS_VERSION="${LS_VERSION:-1.23.2}"
LS_VENV=".cache/labelstudio-venv"
absent=()

# missing NAME WHY: a skip on a laptop, a failure in CI.
missing() {
  case "${CI:-}" in
    1 | true | TRUE | True | yes) echo "setup_external: CI needs $1: $2" >&2; absent+=("$1") ;;
    *) echo "$1: $2; the tests that need it will skip" ;;
  esac
}

if [ ! -x "$LS_VENV/bin/label-studio" ]; then
  echo "setting up Label Studio $LS_VERSION in $LS_VENV (about a minute)"
  mkdir -p .cache
  { python3.11 -m venv "$LS_VENV" \
      && "$LS_VENV/bin/pip" install --quiet --upgrade pip \
      && "$LS_VENV/bin/pip" install --quiet "label-studio==$LS_VERSION"; } \
    || { missing "Label Studio" "label-studio==$LS_VERSION could not be installed in $LS_VENV"; rm -rf "$LS_VENV"; }
fi

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian chromium for the report rendering tests"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || missing "Chromium" "apt-get install chromium failed"
  else
    missing "Chromium" "absent, and installing it needs root and apt-get"
  fi
fi
[ "${#absent[@]}" -eq 0 ]
