#!/usr/bin/env bash
# Sets up .venv with everything sam-serve and its tests need; safe to run again (it skips what is there).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi

# torch first, pinned: this machine keeps these CPU/CUDA wheels on disk; elsewhere pip fetches them.
has() { .venv/bin/python -c "import importlib.util, sys; sys.exit(all(importlib.util.find_spec(m) for m in sys.argv[1:]) is False)" "$@"; }
if ! has torch torchvision; then
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
# The package is installed editable, so code changes need no reinstall; only a changed pyproject.toml does.
# The stamp records the pyproject.toml the venv was installed from (and the interpreter).
STAMP=.venv/.sam-serve-installed
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1) $(.venv/bin/python -c 'import sys; print(sys.version)' | head -1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || ! has sam_core deployments sam_cli; then
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$WANT" > "$STAMP"
fi

# The tests start their own redis-server processes; install the server if the machine lacks it.
if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
  else
    echo "bootstrap: redis-server not found; install Redis 7 and re-run" >&2
    exit 1
  fi
fi
# The labelling page's one dependency, onnxruntime-web, from npm at the lock file's version (web/package-lock.json);
# the app serves its files from web/node_modules, so the page never reaches a CDN. Reinstalled when the lock changes.
NPM_STAMP=web/node_modules/.sam-serve-lock
if command -v npm >/dev/null 2>&1; then
  if [ ! -f "$NPM_STAMP" ] || [ "$(cat "$NPM_STAMP")" != "$(sha256sum web/package-lock.json | cut -d' ' -f1)" ]; then
    npm ci --prefix web --no-audit --no-fund --loglevel=error
    sha256sum web/package-lock.json | cut -d' ' -f1 > "$NPM_STAMP"
  fi
else
  echo "bootstrap: npm not found: the page will decode clicks on the server (install Node.js and re-run)" >&2
fi

# The page's browser tests drive Debian's Chromium (Playwright for Python, the system browser: nothing downloaded).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi

# Label Studio, for the end-to-end test of the /labelstudio backend and label-studio-sdk's own brush decoder. It
# gets its own venv: it pins requests<2.33 and its SDK opencv<5, which .venv's packages are past.
# sentry-sdk 3 dropped an option Label Studio 1.23 passes at start-up (`send_default_pii`): it does not start.
LS_VERSION=1.23.0
LS_PINS="label-studio==$LS_VERSION sentry-sdk<3"
ls_installed() {
  .venv-labelstudio/bin/python -c 'from importlib.metadata import version as v; print(v("label-studio"), v("sentry-sdk").split(".")[0])' 2>/dev/null
}
if [ "$(ls_installed)" != "$LS_VERSION 2" ]; then
  [ -x .venv-labelstudio/bin/python ] || "$PYTHON" -m venv .venv-labelstudio
  # shellcheck disable=SC2086 # the pins are words
  .venv-labelstudio/bin/python -m pip install -q $LS_PINS
fi

echo "bootstrap: .venv ready ($(.venv/bin/python -c 'from importlib.metadata import version; print("torch", version("torch"))'))"
