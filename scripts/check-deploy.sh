#!/usr/bin/env bash
# Checks every file of deploy/ (Prometheus, Grafana, Kubernetes, Docker) and docs/runbooks/ with real tools,
# offline. Prints one line per check (PASS/FAIL and what it checked), the output of a failing check under it,
# and exits non-zero if any check failed.
#
# Usage: scripts/check-deploy.sh              install what is missing, then run every check
#        scripts/check-deploy.sh --live WORKER_BINARY READ_SERVICE_BINARY
#                                             the same, then the live check: Prometheus scrapes a worker under
#                                             load with the shipped rules and every dashboard panel query returns
#                                             a series (scripts/check-dashboards-live.sh; needs the servers, as
#                                             `make deploy-check` does: `make services` first)
#        scripts/check-deploy.sh --install-only
#
# Installs what it needs when missing (as root on Debian bookworm):
#   promtool 2.42      apt-get install prometheus        (Debian's build: no Kubernetes service discovery; its
#                                                         prometheus binary runs the live check, never the service)
#   Python tools       .local/venv from deploy/tools/requirements.txt (kubernetes-validate, PyYAML, check-jsonschema)
#   Node tools         .local/npm from deploy/tools/package-lock.json (@kubernetes-models/keda and
#                      /prometheus-operator for CRD schemas, dockerfile-utils for the Dockerfile lint)
# Nothing is downloaded at check time: kubernetes-validate ships its schemas, check-jsonschema its compose schema.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
TOOLS=deploy/tools
VENV=$ROOT/.local/venv
NPM_DIR=$ROOT/.local/npm
PY=$VENV/bin/python
# The newest Kubernetes minor kubernetes-validate ships, and one a year older that clusters still run.
K8S_VERSIONS=(1.37.0 1.34.0)

log() { printf '%s\n' "$*" >&2; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "${APT_UPDATED:-}" ]; then
        apt-get update -qq >/dev/null || return 1
        APT_UPDATED=1
    fi
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_tools() {
    if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
        log "installing promtool (Debian package prometheus)"
        apt_install prometheus || { log "cannot install prometheus"; return 1; }
    fi
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        log "installing node and npm (Debian packages)"
        apt_install nodejs npm || { log "cannot install nodejs/npm"; return 1; }
    fi
    if [ ! -x "$PY" ] || ! cmp -s "$TOOLS/requirements.txt" "$VENV/requirements.installed"; then
        log "creating $VENV"
        if ! python3 -m venv --clear "$VENV" 2>/dev/null; then
            apt_install python3-venv || { log "cannot install python3-venv"; return 1; }
            python3 -m venv --clear "$VENV" || return 1
        fi
        "$VENV/bin/pip" install -q --disable-pip-version-check -r "$TOOLS/requirements.txt" || return 1
        cp "$TOOLS/requirements.txt" "$VENV/requirements.installed"
    fi
    if [ ! -d "$NPM_DIR/node_modules" ] || ! cmp -s "$TOOLS/package-lock.json" "$NPM_DIR/package-lock.json"; then
        log "installing node tools into $NPM_DIR"
        mkdir -p "$NPM_DIR"
        cp "$TOOLS/package.json" "$TOOLS/package-lock.json" "$NPM_DIR/"
        (cd "$NPM_DIR" && npm ci --no-audit --no-fund --silent) || return 1
    fi
}

if ! install_tools; then
    echo "FAIL  install the check tools (see above)"
    exit 1
fi
[ "${1:-}" = "--install-only" ] && exit 0
live=()
if [ "${1:-}" = "--live" ]; then
    live=("${2:?usage: $0 --live WORKER_BINARY READ_SERVICE_BINARY}" "${3:?usage: $0 --live WORKER_BINARY READ_SERVICE_BINARY}")
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0

# check NAME COMMAND...: runs COMMAND, prints PASS with its last output line, or FAIL with all of its output.
check() {
    local name=$1 out rc
    shift
    out=$("$@" 2>&1)
    rc=$?
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        printf 'PASS  %s  (%s)\n' "$name" "$(printf '%s\n' "$out" | sed '/^[[:space:]]*$/d' | tail -n 1 | sed 's/^[[:space:]]*//')"
    else
        failed=$((failed + 1))
        printf 'FAIL  %s\n' "$name"
        printf '%s\n' "$out" | sed 's/^/      /'
    fi
}

promtool_config_derived() {
    "$PY" "$TOOLS/check_deploy" derive-config deploy/prometheus/prometheus.yml "$TMP/prometheus.derived.yml" &&
        promtool check config "$TMP/prometheus.derived.yml"
}

dashboard_promql() {
    "$PY" "$TOOLS/check_deploy" dashboard-rules "$TMP/dashboard-queries.yml" &&
        promtool check rules "$TMP/dashboard-queries.yml"
}

kubernetes_validate() {
    local version=$1 files out rc
    mapfile -t files < <("$PY" "$TOOLS/check_deploy" builtin-manifests)
    out=$("$VENV/bin/kubernetes-validate" --strict -k "$version" "${files[@]}" 2>&1)
    rc=$?
    printf '%s\n' "$out"
    # A WARN on a built-in manifest means an unknown kind or apiVersion, which kubernetes-validate lets pass.
    if [ $rc -ne 0 ] || grep -q '^WARN' <<<"$out"; then return 1; fi
    echo "${#files[@]} manifests valid (strict) for Kubernetes $version"
}

custom_resources() {
    "$PY" "$TOOLS/check_deploy" crs-json >"$TMP/crs.json" &&
        node "$TOOLS/validate_crs.mjs" "$NPM_DIR/node_modules" <"$TMP/crs.json"
}

# The checkers' own tests (deploy/tools/tests): every check passes on the repository and fails on a broken copy.
tools_tests() {
    local out rc
    out=$("$PY" -m unittest discover -s "$TOOLS/tests" -t "$TOOLS" 2>&1)
    rc=$?
    printf '%s\n' "$out"
    [ $rc -eq 0 ] && grep -E '^Ran [0-9]+ tests' <<<"$out"
}

dockerfile_lint() {
    "$NPM_DIR/node_modules/.bin/dockerfile-utils" lint deploy/Dockerfile && echo "no problems"
}

check "deploy tools: unit tests (each check fails on a broken copy of the files it checks)" tools_tests
check "promtool check rules: alerts.yml, recording.yml (lint: duplicate rules)" \
    promtool check rules --lint=all --lint-fatal deploy/prometheus/alerts.yml deploy/prometheus/recording.yml
check "promtool test rules: every alert fires and stays quiet as tested" \
    promtool test rules deploy/prometheus/tests/*_test.yml
check "promtool check config: prometheus.yml (derived copy, Kubernetes SD -> static targets)" promtool_config_derived
check "promtool check config: prometheus-compose.yml" promtool check config deploy/prometheus/prometheus-compose.yml
check "alert conventions: 7 groups, severity, for, annotations, firing + not-firing test each, namespace kept" \
    "$PY" "$TOOLS/check_deploy" rules
check "runbooks: every runbook_url absolute under one base, same in the PrometheusRule, resolves to a heading" \
    "$PY" "$TOOLS/check_deploy" runbooks
check "metrics contract: names documented in docs/metrics.md, thresholds on bucket boundaries" \
    "$PY" "$TOOLS/check_deploy" contract
check "dashboards: refresh, variables, title + unit per panel, thresholds = alert rules" \
    "$PY" "$TOOLS/check_deploy" dashboards
check "dashboards: every panel query is valid PromQL (promtool check rules)" dashboard_promql
for v in "${K8S_VERSIONS[@]}"; do
    check "kubernetes-validate --strict -k $v: built-in manifests" kubernetes_validate "$v"
done
check "custom resources: ScaledObject, PodMonitor, PrometheusRule against their CRD schemas" custom_resources
check "kubernetes: probes, security, grace period, ConfigMap keys, KEDA sizing + fallback, PDB eviction policy, NetworkPolicies, TLS, database roles, labels" \
    "$PY" "$TOOLS/check_deploy" kubernetes
check "kubernetes credentials: each broken fixture (TLS off, CA not from a mounted Secret, Job as the worker's role, Job outside a NetworkPolicy) fails" \
    "$PY" "$TOOLS/check_deploy" kubernetes-fixtures
check "generated files: prometheusrule.yaml = rule files, runbook links, version labels, config checksum" \
    "$PY" "$TOOLS/sync_generated.py" --check
check "docker-compose.yml: compose-spec schema" \
    "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml
check "docker-compose.yml: referenced files, mounts, Grafana provisioning, Prometheus targets" \
    "$PY" "$TOOLS/check_deploy" compose
check "Dockerfile: lint (dockerfile-utils)" dockerfile_lint
check "Dockerfile: multi-stage, COPY sources, non-root user, default command run" \
    "$PY" "$TOOLS/check_deploy" dockerfile
check "metrics contract on the sample scrape deploy/prometheus/tests/worker-metrics.prom" \
    scripts/check-metrics-contract.sh deploy/prometheus/tests/worker-metrics.prom

if [ ${#live[@]} -gt 0 ]; then
    check "live: Prometheus scrapes a worker under load with the shipped rules; every panel query returns a series" \
        scripts/check-dashboards-live.sh "${live[@]}"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
