#!/usr/bin/env bash
# The test suite on both backends at once (what `make test` runs after ruff, mypy and lint-imports):
#
#   sqlite pass      CARELOOP_TEST_BACKEND=sqlite pytest -m 'not postgres'   every test; db_url is SQLite
#   postgresql pass  CARELOOP_TEST_BACKEND=postgresql pytest                 the database tests on PostgreSQL
#
# (tests/conftest.py says which tests each pass keeps.) The PostgreSQL pass runs when
# CARELOOP_TEST_POSTGRES_URL is set; without it the SQLite pass runs everything and the PostgreSQL
# tests skip with the reason, and under CI that is a failure. Each pass writes its own log
# (.careloop/test/<backend>.log); both summaries are printed at the end; the exit status is non-zero
# when either pass fails. Usage: tests/run_backends.sh PYTHON [pytest args...]
set -uo pipefail
PY=${1:?usage: tests/run_backends.sh PYTHON [pytest args...]}
shift
OUT=${CARELOOP_TEST_OUT:-.careloop/test}
mkdir -p "$OUT"

passes=(sqlite)
if [ -n "${CARELOOP_TEST_POSTGRES_URL:-}" ]; then
  passes+=(postgresql)
elif [ -n "${CI:-}" ]; then
  echo "test: CARELOOP_TEST_POSTGRES_URL is not set under CI: the PostgreSQL pass must run (bash .ci/run starts a server)" >&2
  exit 2
else
  echo "test: CARELOOP_TEST_POSTGRES_URL is not set: SQLite pass only (PostgreSQL tests skip; bash .ci/run starts a server)"
fi

declare -A pid start
for b in "${passes[@]}"; do
  args=()
  if [ "$b" = sqlite ] && [ "${#passes[@]}" -gt 1 ]; then
    args=(-m 'not postgres')  # the PostgreSQL-only tests run in the other pass
  fi
  start[$b]=$(date +%s)
  CARELOOP_TEST_BACKEND=$b "$PY" -m pytest -p no:cacheprovider "${args[@]}" "$@" >"$OUT/$b.log" 2>&1 &
  pid[$b]=$!
  echo "test: $b pass started (log: $OUT/$b.log)"
done

status=0
declare -A rc took
for b in "${passes[@]}"; do
  wait "${pid[$b]}"
  rc[$b]=$?
  took[$b]=$(( $(date +%s) - ${start[$b]} ))
done

for b in "${passes[@]}"; do
  echo
  echo "==================== $b pass: exit ${rc[$b]}, ${took[$b]} s wall ($OUT/$b.log) ===================="
  if [ "${rc[$b]}" -ne 0 ]; then
    cat "$OUT/$b.log"  # the whole log: failures and their output
    status=1
  else
    if grep -q 'short test summary info' "$OUT/$b.log"; then  # skips with their reasons, and the result line
      sed -n '/short test summary info/,$p' "$OUT/$b.log" | tail -n 60
    else
      tail -n 1 "$OUT/$b.log"
    fi
  fi
done
exit $status
