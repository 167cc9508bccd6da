#!/usr/bin/env bash
# Set up and run the gateway on its embedded defaults: SQLite in ./gateway.db, in-process
# limiter, and the built-in SIMULATED upstream (unless GATEWAY_CONFIG names a real routing file).
# Prints a working demo key and a ready-to-paste curl / openai example, then serves on :8080.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/gateway demo "$@"
