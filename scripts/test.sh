#!/usr/bin/env bash
# `make test`: pytest on what PYTEST_ARGS names (default: the whole suite) and, for the
# whole suite (LONG=1), the tests marked long at the same time, in a pytest of their own.
#
# The long tests are minutes of waiting (#24's done-when run: a PSM device observed for
# ten 30 s cycles, 5 minutes; it needs little CPU), so they run beside the rest instead of
# after it: `make test` takes as long as the longer of the two, not their sum. Their
# output goes to $TOOLS/long-tests.log and is printed once both are done; the exit status
# is the first failure's (the suite's, then the long tests'). `make test-long` runs the
# long tests alone.
#
# Usage: scripts/test.sh PYTHON [pytest arguments...]; environment: LONG (1: run the long
# tests beside), TOOLS (default .tools).
set -uo pipefail

cd "$(dirname "$0")/.."

PY=$1
shift
TOOLS=${TOOLS:-.tools}
LONG_LOG="$TOOLS/long-tests.log"
long_pid=

stop_long() {  # if we are stopped: end the background pytest, its bridges and brokers
    if [ -n "$long_pid" ] && kill -0 "$long_pid" 2>/dev/null; then
        kill -TERM -- "-$long_pid" 2>/dev/null  # its own process group (setsid)
        wait "$long_pid" 2>/dev/null
    fi
}

if [ "${LONG:-}" = 1 ]; then
    mkdir -p "$TOOLS"
    # its own temporary directory and no cache: the two pytests share nothing; its own
    # process group, so that what it started ends with it
    setsid env RUN_LONG_TESTS=1 "$PY" -m pytest -q -m long -p no:cacheprovider \
        --basetemp="$TOOLS/long-tests-tmp" tests/integration >"$LONG_LOG" 2>&1 &
    long_pid=$!
    trap stop_long EXIT
    trap 'stop_long; exit 130' INT TERM
    printf '==> the long tests run beside the suite (pid %s, output in %s)\n' \
        "$long_pid" "$LONG_LOG"
fi

started=$SECONDS
# the suite skips the long tests (whatever the caller's environment says): they run once
env -u RUN_LONG_TESTS "$PY" -m pytest -q "$@"
status=$?

if [ -n "$long_pid" ]; then
    suite_done=$SECONDS
    wait "$long_pid"
    long_status=$?
    long_pid=
    printf '\n==> the long tests (run beside the suite; %s s after it ended):\n' \
        "$((SECONDS - suite_done))"
    cat "$LONG_LOG"
    printf '==> make test: %s s in all\n' "$((SECONDS - started))"
    [ "$status" -ne 0 ] || status=$long_status
fi
exit "$status"
