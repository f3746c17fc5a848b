#!/usr/bin/env bash
# The test suite on both backends at once (what `make test` runs after ruff, mypy and lint-imports),
# in three pytest processes:
#
#   sqlite      CARELOOP_TEST_BACKEND=sqlite pytest -m 'not postgres and not hapi'   every other test on SQLite
#   hapi        CARELOOP_TEST_BACKEND=sqlite pytest -m hapi     the HAPI sandbox tests (careloop on SQLite)
#   postgresql  CARELOOP_TEST_BACKEND=postgresql pytest          the database tests on PostgreSQL
#
# (tests/conftest.py says which tests each backend keeps.) The HAPI tests mostly wait on a JVM and on
# HAPI's own retry delays, so they get their own process; the suite is bound by waiting, not by CPU.
# The PostgreSQL pass runs when CARELOOP_TEST_POSTGRES_URL is set; without it the SQLite pass also runs
# the PostgreSQL-only tests, which skip with the reason, and under CI that is a failure. Each pass
# writes its own log (.careloop/test/<pass>.log); every summary is printed at the end; the exit status
# is non-zero when any pass fails. Usage: tests/run_backends.sh PYTHON [pytest options or paths...]
# (not -m: the passes select by mark).
set -uo pipefail
PY=${1:?usage: tests/run_backends.sh PYTHON [pytest args...]}
shift
OUT=${CARELOOP_TEST_OUT:-.careloop/test}
mkdir -p "$OUT"

passes=(sqlite hapi)
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
  backend=$b
  case $b in
    sqlite)
      if [ -n "${CARELOOP_TEST_POSTGRES_URL:-}" ]; then
        args=(-m 'not postgres and not hapi')  # the PostgreSQL-only tests run in the postgresql pass
      else
        args=(-m 'not hapi')
      fi ;;
    hapi) backend=sqlite; args=(-m hapi) ;;
    *) args=() ;;
  esac
  start[$b]=$(date +%s)
  CARELOOP_TEST_BACKEND=$backend "$PY" -m pytest -p no:cacheprovider "${args[@]}" "$@" >"$OUT/$b.log" 2>&1 &
  pid[$b]=$!
  echo "test: $b pass started (log: $OUT/$b.log)"
done

status=0
declare -A rc took
for b in "${passes[@]}"; do
  wait "${pid[$b]}"
  rc[$b]=$?
  if [ "${rc[$b]}" -eq 5 ]; then rc[$b]=0; fi  # pytest's "no tests collected": nothing of this pass selected
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
