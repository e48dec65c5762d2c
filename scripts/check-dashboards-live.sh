#!/usr/bin/env bash
# Proves the dashboards against reality: Debian's Prometheus, run here on a free port, scrapes a live worker
# under load (and a service linking the read API) with the shipped recording and alert rules, and every
# dashboard panel's query, asked through Prometheus' HTTP API, must return a series with a value. Panels
# that only show metrics of services this repository does not run (the gateway, ScyllaDB's own exporter) are
# listed as skipped, with the metric they need. Every rule must evaluate without error.
#
# Usage: scripts/check-dashboards-live.sh WORKER_BINARY READ_SERVICE_BINARY
#        (what `make deploy-check` runs, after `cargo build --bin score-worker --example read_service`)
# The worker runs against the dev set of environments.toml (SCORE_WORKER_NATS_PORT / SCORE_WORKER_CQL_PORT move it
# them: `make services`), on a stream, consumer and keyspace of its own. Everything it starts is stopped on
# exit. Takes about 40 s. Installs Prometheus (Debian's package, with promtool) if missing.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=$ROOT/.local/venv/bin/python
worker_bin=${1:?usage: $0 WORKER_BINARY READ_SERVICE_BINARY}
reader_bin=${2:?usage: $0 WORKER_BINARY READ_SERVICE_BINARY}
# Seconds of load before the panels are queried, and the scrape and rule interval meanwhile.
LOAD_SECONDS=${SCORE_WORKER_LIVE_LOAD_SECONDS:-20}

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null || [ ! -x "$PY" ]; then
    "$ROOT/scripts/check-deploy.sh" --install-only || exit 1
fi
[ -x "$reader_bin" ] || { echo "FAIL  $reader_bin: not an executable (cargo build --example read_service)"; exit 1; }

TMP=$(mktemp -d)
# shellcheck source=lib/live-worker.sh
. "$ROOT/scripts/lib/live-worker.sh"
PROM_PID=
READER_PID=
LOAD_PID=
# Run by the EXIT trap below, which shellcheck 0.9 does not count as a call (SC2317: "unreachable").
# shellcheck disable=SC2317
cleanup() {
    for pid in $LOAD_PID $READER_PID $PROM_PID; do
        kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    stop_live_worker
    rm -rf "$TMP"
}
trap cleanup EXIT
started=$(date +%s)

# wait_for WHAT URL SECONDS PID: until URL answers 2xx; fails if PID exits or time runs out.
wait_for() {
    local what=$1 url=$2 limit=$3 pid=$4 i
    for ((i = 0; i < limit * 10; i++)); do
        http_ok "$url" && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "FAIL  $what did not answer $url within $limit s"
    return 1
}

live_worker "$worker_bin" dashboards

# The read API, linked by a service of its own (examples/read_service.rs), on the sample's first board.
reader_port=$(free_port)
"$reader_bin" "127.0.0.1:$reader_port" season-1.board-0 >"$TMP/reader.log" 2>&1 &
READER_PID=$!
wait_for "the read service" "http://127.0.0.1:$reader_port/metrics" 60 "$READER_PID" ||
    { sed 's/^/      /' "$TMP/reader.log"; exit 1; }

prom_port=$(free_port)
cat >"$TMP/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $ROOT/deploy/prometheus/recording.yml
  - $ROOT/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: score-worker
    static_configs:
      - targets: ["127.0.0.1:$WORKER_PORT"]
        labels: {namespace: deploy-check}
  - job_name: read-service
    static_configs:
      - targets: ["127.0.0.1:$reader_port"]
        labels: {namespace: deploy-check}
YAML
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" >"$TMP/prometheus.log" 2>&1 &
PROM_PID=$!
wait_for "Prometheus" "http://127.0.0.1:$prom_port/-/ready" 30 "$PROM_PID" ||
    { tail -n 20 "$TMP/prometheus.log" | sed 's/^/      /'; exit 1; }

# Load: sample events in rounds, the first of which gives the read service its board.
(
    end=$(($(date +%s) + LOAD_SECONDS))
    while [ "$(date +%s)" -lt "$end" ]; do
        "$worker_bin" publish-sample --count 200 --profiles 50 --leaderboards 1 >>"$TMP/load.log" 2>&1 || exit 1
    done
) &
LOAD_PID=$!
wait "$LOAD_PID"
load_rc=$?
LOAD_PID=
if [ "$load_rc" -ne 0 ]; then
    echo "FAIL  publish-sample"
    tail -n 20 "$TMP/load.log" | sed 's/^/      /'
    exit 1
fi
# Two more scrapes after the last event, so each rate window holds the load.
sleep 3

out=$("$PY" "$ROOT/deploy/tools/check_deploy" live-dashboards "http://127.0.0.1:$prom_port")
rc=$?
printf '%s\n' "$out" | sed '$d'
if [ "$rc" -ne 0 ]; then
    echo "  worker log (last lines):"
    tail -n 15 "$WORKER_LOG" | sed 's/^/    /'
fi
echo "$(printf '%s\n' "$out" | tail -n 1) (in $(($(date +%s) - started)) s)"
exit "$rc"
