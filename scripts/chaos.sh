#!/usr/bin/env bash
# The long chaos runs (the issue's durations) in one command, then a summary of the numbers.
# - GATEWAY_TEST_LONG=1: Redis frozen 30 s, the ledger table locked 30 s, Postgres down 60 s,
#   20 gateway SIGKILLs; plus the runs that are already full length in the normal suite
#   (Redis killed and restarted empty, two replicas' limits over 75 s, upstream faults).
# - Each test prints one `chaos:` / `ledger:` line of measured numbers (and appends them to
#   GATEWAY_CHAOS_REPORT as JSON lines); the summary below collects them.
# Needs what scripts/test.sh sets up (.venv, Postgres and Redis binaries). Runs under `nice`:
# the machine has two cores. Extra arguments go to pytest (e.g. `-k redis_frozen`).
# GATEWAY_CHAOS_SEED fixes the moments of the random kills (the run prints its seed);
# CHAOS_COMMIT labels a run from an exported tree (`git archive`) that has no .git.
set -uo pipefail
cd "$(dirname "$0")/.."

out=${CHAOS_OUT:-$(mktemp -d /tmp/gateway-chaos-XXXXXX)}
mkdir -p "$out"
export GATEWAY_TEST_LONG=1
export GATEWAY_CHAOS_REPORT="$out/report.jsonl"
: >"$GATEWAY_CHAOS_REPORT"

tests=(
  tests/e2e/test_chaos_redis_freeze.py
  tests/e2e/test_chaos_ledger_lock.py
  tests/e2e/test_chaos_upstream.py
  tests/e2e/test_chaos_gateway_kill.py
  tests/e2e/test_ledger_durability.py
  tests/e2e/test_redis_outage.py
  tests/e2e/test_limits_exact.py
  tests/e2e/test_graceful_shutdown.py
  tests/e2e/test_routing.py
)
# The lines of measured numbers the tests print.
numbers='^[.xXsFE]*(chaos: |ledger: |fail-open: |fail-closed: |frozen Redis: |storm: |standalone |cluster |gaps |Retry-After|ejected |equal replicas|one slow|readmitted|upstream stream ended|upstream request ended)'
started=$(date -u +%s)
echo "chaos run $(date -u +%FT%TZ) at ${CHAOS_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')}; log: $out/pytest.log"
nice .venv/bin/pytest -s -q -rxXfE "${tests[@]}" "$@" 2>&1 | tee "$out/pytest.log" |
  grep -E "$numbers|passed|failed|XFAIL|XPASS|ERROR"
status=${PIPESTATUS[0]}

echo
echo "== summary ($(( $(date -u +%s) - started )) s, pytest exit $status) =="
grep -E "$numbers" "$out/pytest.log" | sed 's/^/  /'
grep -E '^(XFAIL|XPASS|FAILED|ERROR) ' "$out/pytest.log" | sed 's/^/  /'
tail -n 1 "$out/pytest.log"
exit "$status"
