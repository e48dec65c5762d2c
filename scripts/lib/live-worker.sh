# shellcheck shell=bash
# Sourced by scripts/check-metrics-contract.sh and scripts/check-dashboards-live.sh: starts a real worker
# (`score-worker run`) against the dev set of environments.toml (`cargo xtask env --worker dev`: its
# SCORE_WORKER_*_PORT variables move it), on a stream, consumer and keyspace of its own (migrated first), and
# stops it on exit.
#
#   live_worker BINARY NAME    NAME (lower case) names the stream NAME upper-cased, the consumer, the subjects
#                              NAME.scores.update.> and the dead-letter stream; sets WORKER_PID, WORKER_PORT,
#                              WORKER_LOG, and exports the SCORE_WORKER__* settings (for other commands, such
#                              as `publish-sample`, to reach the same stream and keyspace) once /readyz says 200.
#   stop_live_worker           SIGTERM, then waits (also run by the caller's EXIT trap)
#   free_port                  a free loopback port
#
# Needs: PY (a python3), TMP (a scratch directory). Exits 1 with the worker's log if it does not become ready.

WORKER_PID=
WORKER_PORT=
WORKER_LOG=

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# http_ok URL: exit 0 if URL answers 2xx within 2 s.
http_ok() {
    "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null
}

live_worker() {
    local bin=$1 name=$2 i
    [ -x "$bin" ] || { echo "FAIL  $bin: not an executable (cargo build first)"; exit 1; }
    WORKER_PORT=$(free_port)
    WORKER_LOG=$TMP/worker-$name.log
    local upper
    upper=$(printf '%s' "$name" | tr '[:lower:]' '[:upper:]')
    local servers
    servers=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && cargo xtask env --worker dev | grep -E '^export SCORE_WORKER__') ||
        { echo "FAIL  cargo xtask env --worker dev"; exit 1; }
    eval "$servers" # SCORE_WORKER__NATS__URL, SCORE_WORKER__SCYLLA__NODES
    export SCORE_WORKER__SCYLLA__KEYSPACE=score_worker_contract
    export SCORE_WORKER__NATS__SUBJECTS="[\"$name.scores.update.>\"]" SCORE_WORKER__NATS__STREAM=$upper
    export SCORE_WORKER__NATS__CONSUMER=$name SCORE_WORKER__NATS__DEADLETTER_STREAM=${upper}_DLQ
    export SCORE_WORKER__NATS__DEADLETTER_PREFIX=$name.scores.deadletter
    export SCORE_WORKER__HTTP__LISTEN=127.0.0.1:$WORKER_PORT SCORE_WORKER__LOG__FORMAT=text
    "$bin" migrate >"$TMP/migrate-$name.log" 2>&1 ||
        { echo "FAIL  $bin migrate"; sed 's/^/      /' "$TMP/migrate-$name.log"; exit 1; }
    "$bin" run >"$WORKER_LOG" 2>&1 &
    WORKER_PID=$!
    for ((i = 0; i < 600; i++)); do
        http_ok "http://127.0.0.1:$WORKER_PORT/readyz" && return 0
        kill -0 "$WORKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "FAIL  the live worker did not become ready within 60 s"
    tail -n 20 "$WORKER_LOG" | sed 's/^/      /'
    exit 1
}

stop_live_worker() {
    if [ -n "$WORKER_PID" ] && kill -0 "$WORKER_PID" 2>/dev/null; then
        kill -TERM "$WORKER_PID" 2>/dev/null
        wait "$WORKER_PID" 2>/dev/null
    fi
    WORKER_PID=
}
