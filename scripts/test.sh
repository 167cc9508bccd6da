#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh machine (Python, pip and Debian's apt only).
# - creates .venv and installs the project with its test extras;
# - makes sure real Postgres and Redis binaries (and Chromium, for the browser test) exist: the suite uses the servers running on
#   127.0.0.1 (:5432, :6379) when there are some, and otherwise starts throwaway ones from
#   these binaries, so they are installed with apt when missing;
# - runs ruff (lint + format check) and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

need_apt=()
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 && ! command -v pg_ctl >/dev/null; then
  need_apt+=(postgresql)
fi
command -v redis-server >/dev/null || need_apt+=(redis-server)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)   # the cost page's browser test (Playwright)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing ${need_apt[*]} with apt (throwaway servers for the tests)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/pytest "$@"
