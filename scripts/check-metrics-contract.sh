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
# point at (default: the dev set of environments.toml), on a stream, consumer and keyspace of its own (migrated first), scrapes
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
# shellcheck source=lib/live-worker.sh
. "$ROOT/scripts/lib/live-worker.sh"
cleanup() {
    stop_live_worker
    rm -rf "$TMP"
}
trap cleanup EXIT
scrape=$TMP/metrics

if [ "$src" = --live ]; then
    live_worker "${2:?usage: $0 --live BINARY}" contract
    src=http://127.0.0.1:$WORKER_PORT/metrics
fi

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
if out=$("$PY" "$ROOT/deploy/tools/check_deploy" metrics-contract "$scrape" 2>&1); then
    passed=$((passed + 1))
    echo "PASS  contract: $(printf '%s\n' "$out" | tail -n 1)"
else
    failed=$((failed + 1))
    echo "FAIL  contract: score_worker_* series used by rules and dashboards, contract types and labels"
    printf '%s\n' "$out" | sed 's/^/      /'
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
