#!/usr/bin/env bash
# Checks a score-worker /metrics scrape against the metric contract (docs/metrics.md) and the rules and
# dashboards that use it:
#   1. `promtool check metrics` finds no problem (names, units, HELP, counter suffixes);
#   2. every score_worker_* series the alert rules, recording rules and dashboards select is exported
#      (histograms through their _bucket/_sum/_count series, label values such as reason="max_deliveries"
#      included), every metric of the contract is exported with its type and label values, and the
#      thresholds the rules put on worker histograms are exported `le` boundaries.
#
# Usage: scripts/check-metrics-contract.sh http://127.0.0.1:9102/metrics
#        scripts/check-metrics-contract.sh FILE
#        scripts/check-metrics-contract.sh --live BINARY   (what `make metrics-contract` runs)
# --live starts BINARY (`score-worker run`) against the servers SCORE_WORKER_NATS_PORT / SCORE_WORKER_CQL_PORT
# point at (default 4222 / 9042), on a stream, consumer and keyspace of its own (migrated first), scrapes
# its /metrics once it is ready, and stops it: no other test has to run first.
# Prints one line per check and exits non-zero if one fails. Installs its tools through scripts/check-deploy.sh.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=$ROOT/.local/venv/bin/python
src=${1:?usage: $0 URL-or-FILE}

if ! command -v promtool >/dev/null || [ ! -x "$PY" ]; then
    "$ROOT/scripts/check-deploy.sh" --install-only || exit 1
fi

TMP=$(mktemp -d)
WORKER_PID=
cleanup() {
    if [ -n "$WORKER_PID" ] && kill -0 "$WORKER_PID" 2>/dev/null; then
        kill -TERM "$WORKER_PID" 2>/dev/null
        wait "$WORKER_PID" 2>/dev/null
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
scrape=$TMP/metrics

# live_worker BINARY: runs it on a free loopback port; sets src to its /metrics URL once /readyz says 200.
live_worker() {
    local bin=$1 port i
    [ -x "$bin" ] || { echo "FAIL  $bin: not an executable (cargo build first)"; exit 1; }
    port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    export SCORE_WORKER__NATS__URL=nats://127.0.0.1:${SCORE_WORKER_NATS_PORT:-4222}
    export SCORE_WORKER__SCYLLA__NODES="[\"127.0.0.1:${SCORE_WORKER_CQL_PORT:-9042}\"]"
    export SCORE_WORKER__SCYLLA__KEYSPACE=score_worker_contract
    export SCORE_WORKER__NATS__SUBJECTS='["contract.scores.update.>"]' SCORE_WORKER__NATS__STREAM=CONTRACT
    export SCORE_WORKER__NATS__CONSUMER=contract SCORE_WORKER__NATS__DEADLETTER_STREAM=CONTRACT_DLQ
    export SCORE_WORKER__NATS__DEADLETTER_PREFIX=contract.scores.deadletter
    export SCORE_WORKER__HTTP__LISTEN=127.0.0.1:$port SCORE_WORKER__LOG__FORMAT=text
    "$bin" migrate >"$TMP/migrate.log" 2>&1 || { echo "FAIL  $bin migrate"; sed 's/^/      /' "$TMP/migrate.log"; exit 1; }
    "$bin" run >"$TMP/worker.log" 2>&1 &
    WORKER_PID=$!
    for ((i = 0; i < 600; i++)); do
        if "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
            "http://127.0.0.1:$port/readyz" 2>/dev/null; then
            src=http://127.0.0.1:$port/metrics
            return 0
        fi
        kill -0 "$WORKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "FAIL  the live worker did not become ready within 60 s"
    tail -n 20 "$TMP/worker.log" | sed 's/^/      /'
    exit 1
}
if [ "$src" = --live ]; then live_worker "${2:?usage: $0 --live BINARY}"; fi

case $src in
    http://* | https://*)
        if ! "$PY" - "$src" "$scrape" <<'EOF'; then
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as resp:
    open(sys.argv[2], "wb").write(resp.read())
EOF
            echo "FAIL  scrape $src"
            exit 1
        fi
        ;;
    *)
        [ -f "$src" ] || { echo "FAIL  $src: no such file"; exit 1; }
        cp "$src" "$scrape"
        ;;
esac

passed=0
failed=0
if out=$(promtool check metrics <"$scrape" 2>&1) && [ -z "$out" ]; then
    passed=$((passed + 1))
    echo "PASS  promtool check metrics: no problems in $src"
else
    failed=$((failed + 1))
    echo "FAIL  promtool check metrics: $src"
    printf '%s\n' "$out" | sed 's/^/      /'
fi
if out=$("$PY" "$ROOT/deploy/tools/check_deploy.py" metrics-contract "$scrape" 2>&1); then
    passed=$((passed + 1))
    echo "PASS  contract: $(printf '%s\n' "$out" | tail -n 1)"
else
    failed=$((failed + 1))
    echo "FAIL  contract: score_worker_* series used by rules and dashboards, contract types and labels"
    printf '%s\n' "$out" | sed 's/^/      /'
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
