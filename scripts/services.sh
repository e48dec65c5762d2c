#!/usr/bin/env bash
# Installs, starts and stops the real servers of the server sets that score-worker's local runs and tests
# need: each set is a nats-server with JetStream, an Apache Cassandra 5.0 (CQL; the ScyllaDB stand-in) and,
# for some, a PostgreSQL (Debian's package; user postgres, trust, TLS on: the migrate-postgres source); and
# the 3-node clusters of each on loopback. What each set is (versions, addresses, ports, state directory,
# heap, authentication, TLS) is declared in environments.toml, nowhere else: run this script through
# `cargo xtask up|down|status SET`, which hands it every value (SCORE_WORKER_SERVICES_ENV=given). Run
# directly, it asks `cargo xtask env` for the dev set and the clusters itself (SCORE_WORKER_LOCAL and the
# SCORE_WORKER_*_PORT variables still move the pair).
#
# Usage: scripts/services.sh COMMAND
#   up                 install what is missing, start the set's servers (or reuse ones already answering),
#                      wait until healthy, print one summary line per server
#   down               stop the servers this script started (SIGTERM, up to 20 s, then SIGKILL)
#   status             print whether each server answers; exit 0 if all do, 3 otherwise
#   start-nats | stop-nats | start-cassandra | stop-cassandra | start-postgres | stop-postgres
#   nats-pid | cassandra-pid                                      print its pid (for SIGSTOP/SIGCONT tests)
#   nats-bin           print the path of the nats-server binary SCORE_WORKER_NATS_SERVER selects
#                      (building or installing it first), e.g. for tests that start a nats-server of their own
#   bootstrap          install and fetch what the set needs without starting anything: JDK 17, the Cassandra
#                      jars (Maven), the nats-server (Go build or apt), into SCORE_WORKER_CACHE
#
# Clusters (state in SCORE_WORKER_CLUSTER_DIR; nodes, addresses and ports from environments.toml [cluster]):
#   cluster-up [nats|cassandra]       start the 3-node NATS JetStream cluster and/or the 3-node Cassandra
#                                     cluster (both without an argument), reusing nodes already running
#   cluster-down [nats|cassandra]     stop them (every node at once: SIGTERM, then SIGKILL after 20 s)
#   cluster-status [nats|cassandra]   one line per node; exit 0 if every node answers, 3 otherwise
#   cluster-kill KIND N               SIGKILL node N (1-3) of KIND (nats|cassandra) and wait until it is gone
#   cluster-stop KIND N               stop node N cleanly (SIGTERM)
#   cluster-start KIND N              start node N again and wait until it is healthy (NATS: /healthz of that
#                                     node; Cassandra: CQL answers and every running node gossips it NORMAL,
#                                     read with `cargo xtask cql`)
#   cluster-pid KIND N                print node N's pid
#   cluster-env                       print the worker's settings for the clusters (= cargo xtask env --worker cluster)
#   cluster-nodetool N ARGS...        run Cassandra's nodetool against node N (JMX on loopback)
#
#   NATS: cluster "score-worker-nats"; JetStream store per node and version. Cassandra: SimpleSnitch
#   (datacenter1/rack1), one token per node, evenly spaced; hinted handoff on. The `two-dc` variant
#   (SCORE_WORKER_CLUSTER_DCS=2, node datacenters in SCORE_WORKER_CLUSTER_NODE_DCS): GossipingPropertyFileSnitch.
#
# State lives in the set's directory under <repo>/.local/ (gitignored): nats-<version>/ (JetStream store, one
# per server version, so a store is never opened by an older server), cassandra/ (data, commitlog, ...),
# *.log, *.pid. The Cassandra jars are fetched once from Maven Central (deploy/cassandra/pom.xml) and
# nats-server is built once from the Go module proxy (deploy/nats-server/go.mod), into a cache outside the
# repo, so fresh clones on the same machine reuse them.
#
# Environment (besides the set's values from cargo xtask):
#   SCORE_WORKER_NATS_SERVER          which nats-server (environments.toml nats.server): "current" = the
#                                     release pinned in deploy/nats-server/go.mod, built with Go; its version
#                                     ("2.15", "2.15.3"); "debian" = Debian's package; or a path to a binary.
#                                     A server this script started with another version is restarted.
#   SCORE_WORKER_CACHE=DIR            jar and nats-server cache (default ~/.cache/score-worker)
#   SCORE_WORKER_FRESH_DB=1           wipe the set's cassandra/ before starting Cassandra (restarts it if ours)
#   SCORE_WORKER_FRESH_NATS=1         wipe the set's nats-<version>/ (the JetStream store) before starting NATS
#   SCORE_WORKER_FRESH_CLUSTER=1      cluster-up: stop and wipe the cluster(s) first. A node cannot change
#                                     datacenter: a cluster of the other layout is stopped and wiped first;
#                                     cluster-start keeps the running layout.
#   SCORE_WORKER_CASSANDRA_TIMEOUT=180, SCORE_WORKER_NATS_TIMEOUT=30   startup timeouts in seconds (per node)
#   SCORE_WORKER_JAVA_HOME=DIR        JDK 17 to use (otherwise /usr/lib/jvm/*17*, installed if absent)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)

# cargo xtask: the binary that called us, else `cargo run` (a no-op build once it is built).
xtask() {
    if [ -n "${SCORE_WORKER_XTASK:-}" ]; then "$SCORE_WORKER_XTASK" "$@"; else
        cargo run --locked --quiet --manifest-path "$ROOT/Cargo.toml" -p xtask -- "$@"
    fi
}
if [ "${SCORE_WORKER_SERVICES_ENV:-}" != given ]; then
    ENV_TEXT=$(xtask env "${SCORE_WORKER_ENVIRONMENT:-dev}" cluster) ||
        { echo "services: ERROR: cargo xtask env failed" >&2; exit 1; }
    eval "$ENV_TEXT"
fi
LOCAL=${SCORE_WORKER_LOCAL:-${SCORE_WORKER_CLUSTER_DIR:?no server set given: run through cargo xtask}}
DEPLOY=$ROOT/deploy/cassandra
HOME=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
CACHE=${SCORE_WORKER_CACHE:-$HOME/.cache/score-worker}

# The set's values (empty when only the clusters' were given: the set commands check need_set).
HOST=${SCORE_WORKER_HOST:-}
NATS_PORT=${SCORE_WORKER_NATS_PORT:-}
NATS_MON_PORT=${SCORE_WORKER_NATS_MON_PORT:-}
CQL_PORT=${SCORE_WORKER_CQL_PORT:-}
STORAGE_PORT=${SCORE_WORKER_STORAGE_PORT:-}

NATS_TIMEOUT=${SCORE_WORKER_NATS_TIMEOUT:-30}
CASS_TIMEOUT=${SCORE_WORKER_CASSANDRA_TIMEOUT:-180}
CASS_HEAP=${SCORE_WORKER_CASSANDRA_HEAP:-}
STOP_TIMEOUT=20

NATS_DIR= # $LOCAL/nats-<version>, set once the version is known
NATS_LOG=$LOCAL/nats.log
NATS_PIDFILE=$LOCAL/nats.pid
NATS_VERFILE=$LOCAL/nats.version
CASS_DATA=$LOCAL/cassandra
CASS_TMP=$LOCAL/cassandra-tmp
CASS_LOG=$LOCAL/cassandra.log
CASS_PIDFILE=$LOCAL/cassandra.pid
CASS_MODEFILE=$LOCAL/cassandra.mode

# ---------------------------------------------------------------------------------------------- helpers

log() { printf 'services: %s\n' "$*" >&2; }
die() {
    printf 'services: ERROR: %s\n' "$*" >&2
    exit 1
}

need_set() {
    local v
    for v in "$HOST" "$NATS_PORT" "$NATS_MON_PORT" "$CQL_PORT" "$STORAGE_PORT" "$CASS_HEAP"; do
        [ -n "$v" ] || die "no server set given (run it through cargo xtask, or scripts/services.sh alone)"
    done
}

now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; }
since() { # since START_US -> "12.3s"
    local ds=$((($(now_us) - $1) / 100000))
    printf '%d.%ds' $((ds / 10)) $((ds % 10))
}

SUDO=()
if [ "$(id -u)" != 0 ]; then SUDO=(sudo -n); fi
APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "need to install $* but apt-get is not available"
    mkdir -p "$LOCAL"
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        "${SUDO[@]}" apt-get -qq -o DPkg::Lock::Timeout=300 update </dev/null >"$LOCAL/apt.log" 2>&1 ||
            { tail -n 20 "$LOCAL/apt.log" >&2; die "apt-get update failed (log: $LOCAL/apt.log)"; }
        APT_UPDATED=1
    fi
    local t0
    t0=$(now_us)
    log "apt-get install $*"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "$@" \
        </dev/null >>"$LOCAL/apt.log" 2>&1 ||
        { tail -n 20 "$LOCAL/apt.log" >&2; die "apt-get install $* failed (log: $LOCAL/apt.log)"; }
    log "installed $* in $(since "$t0")"
}

# alive PID: the process exists and is not a zombie (PID 1 here may not reap orphans). A zombie main thread
# whose other threads still run (a JVM part-way through its shutdown hooks) is still alive.
alive() {
    local st t n=0
    [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
    case $st in
    '' | X) return 1 ;;
    Z)
        for t in /proc/"$1"/task/*; do [ -e "$t" ] && n=$((n + 1)); done
        [ "$n" -gt 1 ]
        ;;
    *) return 0 ;;
    esac
}

stopped() { # stopped PID: in state T (SIGSTOP) / t
    local st
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
    [ "$st" = T ] || [ "$st" = t ]
}

# pidfile_pid PIDFILE PATTERN: the pid in PIDFILE if that process is alive and its command line has PATTERN.
pidfile_pid() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(tr -dc 0-9 <"$1")
    alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2" || return 1
    echo "$pid"
}

# owned_pid NAME: the pid from .local/NAME.pid if that process is alive and is what we started.
owned_pid() {
    case $1 in
    nats) pidfile_pid "$NATS_PIDFILE" nats-server ;;
    cassandra) pidfile_pid "$CASS_PIDFILE" org.apache.cassandra.service.CassandraDaemon ;;
    esac
}

# listener_pid PORT: pid of whatever listens on 127.0.0.1:PORT (needs ss), for servers we did not start.
listener_pid() {
    command -v ss >/dev/null || return 1
    ss -Htlnp "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1 | grep .
}

tcp_open() { (exec 3<>"/dev/tcp/${2:-$HOST}/$1") 2>/dev/null; } # tcp_open PORT [ADDRESS]

# A NATS server greets every new connection with "INFO {...}" (nats_ping [PORT]).
nats_ping() {
    local h
    h=$( (exec 3<>"/dev/tcp/$HOST/${1:-$NATS_PORT}" && timeout 3 head -c 5 <&3) 2>/dev/null) || return 1
    [ "$h" = "INFO " ]
}

# nats_running_version [PORT]: the "version" of the server's INFO greeting, e.g. 2.9.10.
nats_running_version() {
    local h
    h=$( (exec 3<>"/dev/tcp/$HOST/${1:-$NATS_PORT}" && timeout 3 head -n 1 <&3) 2>/dev/null) || return 1
    h=$(sed -n 's/.*"version":"\([^"]*\)".*/\1/p' <<<"$h")
    [ -n "$h" ] && echo "$h"
}

# JetStream is ready once /healthz says so (without curl, the INFO greeting has to do) (nats_healthz [MON_PORT]).
nats_healthz() {
    command -v curl >/dev/null || return 0
    curl -sf -m 3 "http://$HOST:${1:-$NATS_MON_PORT}/healthz" >/dev/null 2>&1
}

# CQL OPTIONS request (protocol v4: version 0x04, flags 0, stream 0, opcode 0x05 OPTIONS, body length 0);
# a live node answers with a SUPPORTED frame, header 84 00 0000 06 (cql_ping [ADDRESS [PORT]]).
cql_ping() {
    local h
    h=$( (
        exec 3<>"/dev/tcp/${1:-$HOST}/${2:-$CQL_PORT}" || exit 1
        printf '\x04\x00\x00\x00\x05\x00\x00\x00\x00' >&3
        timeout 5 head -c 5 <&3 | od -An -tx1 | tr -d ' \n'
    ) 2>/dev/null) || return 1
    [ "$h" = 8400000006 ]
}

rss_of() { awk '/^VmRSS:/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || true; }

# show_tail FILE: the end of a server log, long lines (config dump, classpath) cut, to stderr.
show_tail() {
    [ -f "$1" ] || return 0
    printf -- '--- last lines of %s ---\n' "$1" >&2
    tail -n 40 "$1" | cut -c1-300 >&2
    printf -- '---\n' >&2
}

rotate_log() { if [ -s "$1" ]; then mv -f "$1" "$1.prev"; fi; }

# launch LOGFILE PIDFILE CMD...: start CMD detached (own session, no inherited fds, cwd .local), record pid.
launch() {
    local logfile=$1 pidfile=$2
    shift 2
    (
        # Close every inherited fd above 2 (our lock, make's pipes...) so the server holds none of them.
        for fd in /proc/"$BASHPID"/fd/*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
        done 2>/dev/null
        cd "$LOCAL"
        exec setsid nohup "$@" >"$logfile" 2>&1 </dev/null
    ) &
    echo $! >"$pidfile"
}

# stop_server NAME PIDFILE: SIGTERM (and SIGCONT, in case a test left it SIGSTOPped), wait, then SIGKILL.
stop_server() {
    local name=$1 pidfile=$2 pid t0 i how=SIGTERM
    if ! pid=$(owned_pid "$name"); then
        rm -f "$pidfile"
        if { [ "$name" = nats ] && nats_ping; } || { [ "$name" = cassandra ] && cql_ping; }; then
            printf '%-9s left running: it answers but was not started by this script (no live pid file)\n' "$name"
        else
            printf '%-9s not running\n' "$name"
        fi
        return 0
    fi
    t0=$(now_us)
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        how=SIGKILL
        log "$name (pid $pid) still running after ${STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        alive "$pid" && die "$name (pid $pid) survived SIGKILL"
    fi
    rm -f "$pidfile"
    printf '%-9s stopped (pid %s, %s, %s)\n' "$name" "$pid" "$how" "$(since "$t0")"
}

# Serialise mutating commands (two `make test` at once must not start two Cassandras).
take_lock() {
    mkdir -p "$LOCAL"
    exec {LOCK_FD}>"$LOCAL/.services.lock"
    flock -w 600 "$LOCK_FD" || die "another scripts/services.sh holds $LOCAL/.services.lock for 10 minutes"
}

# ------------------------------------------------------------------------------------------------ JDK 17

JAVA=
java_major() { "$1" -version 2>&1 | sed -n 's/.* version "\(1\.\)\{0,1\}\([0-9]*\).*/\2/p' | head -n 1; }

find_java17() {
    local cand
    if [ -n "${SCORE_WORKER_JAVA_HOME:-}" ] && [ "$(java_major "$SCORE_WORKER_JAVA_HOME/bin/java" 2>/dev/null)" != 17 ]; then
        log "WARNING: ignoring SCORE_WORKER_JAVA_HOME=$SCORE_WORKER_JAVA_HOME: not a JDK 17"
    fi
    for cand in ${SCORE_WORKER_JAVA_HOME:+"$SCORE_WORKER_JAVA_HOME"} /usr/lib/jvm/*17* /usr/lib/jvm/*; do
        [ -x "$cand/bin/java" ] || continue
        if [ "$(java_major "$cand/bin/java")" = 17 ]; then
            JAVA_HOME17=$cand
            JAVA=$cand/bin/java
            return 0
        fi
    done
    return 1
}

ensure_java17() {
    [ -n "$JAVA" ] && return 0
    if ! find_java17; then
        apt_install openjdk-17-jre-headless
        find_java17 || die "no JDK 17 found under /usr/lib/jvm even after installing openjdk-17-jre-headless"
    fi
}

# ----------------------------------------------------------------------------------------- Cassandra jars

CASS_VER=$(sed -n 's:.*<cassandra.version>\([^<]*\)</cassandra.version>.*:\1:p' "$DEPLOY/pom.xml" | head -n 1)
[ -n "$CASS_VER" ] || die "cannot read <cassandra.version> from $DEPLOY/pom.xml"
CASS_HOME=$CACHE/cassandra-$CASS_VER
CASS_LIB=$CASS_HOME/lib
CASS_MARKER=$CASS_HOME/.complete

cassandra_jars_ok() { [ -f "$CASS_MARKER" ] && [ -f "$CASS_LIB/cassandra-all-$CASS_VER.jar" ]; }

ensure_cassandra_jars() {
    cassandra_jars_ok && return 0
    ensure_java17
    command -v mvn >/dev/null || apt_install maven
    mkdir -p "$CASS_HOME"
    local fd t0 tmp=$CASS_HOME/lib.partial.$$ n
    exec {fd}>"$CASS_HOME/.lock" # the cache is shared by every clone on this machine
    flock -w 900 "$fd" || die "timed out waiting for $CASS_HOME/.lock"
    if ! cassandra_jars_ok; then
        t0=$(now_us)
        log "fetching Cassandra $CASS_VER jars from Maven Central into $CASS_LIB (once per machine)"
        rm -rf "$tmp" "$CASS_LIB"
        if ! JAVA_HOME=$JAVA_HOME17 mvn -B -q -f "$DEPLOY/pom.xml" \
            org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
            -DoutputDirectory="$tmp" -DincludeScope=runtime </dev/null >"$CASS_HOME/mvn.log" 2>&1; then
            tail -n 30 "$CASS_HOME/mvn.log" >&2
            rm -rf "$tmp"
            die "mvn copy-dependencies failed (log: $CASS_HOME/mvn.log)"
        fi
        [ -f "$tmp/cassandra-all-$CASS_VER.jar" ] || die "mvn succeeded but $tmp has no cassandra-all-$CASS_VER.jar"
        mv "$tmp" "$CASS_LIB"
        n=$(find "$CASS_LIB" -name '*.jar' | wc -l)
        printf 'cassandra-all %s: %s jars, fetched %s\n' "$CASS_VER" "$n" "$(date -u +%FT%TZ)" >"$CASS_MARKER"
        log "fetched $n jars in $(since "$t0")"
    fi
    exec {fd}>&-
}

# -------------------------------------------------------------------------------------------------- NATS

NATS_MOD=$ROOT/deploy/nats-server
NATS_PINNED=$(sed -n 's:^[[:space:]]*github.com/nats-io/nats-server/v2 v\([0-9][0-9.]*\)\([[:space:]].*\)\{0,1\}$:\1:p' "$NATS_MOD/go.mod" | head -n 1)
[ -n "$NATS_PINNED" ] || die "cannot read the github.com/nats-io/nats-server/v2 version from $NATS_MOD/go.mod"
NATS_CHOICE=${SCORE_WORKER_NATS_SERVER:-current}
NATS_BUILD_HOME=$CACHE/nats-server-$NATS_PINNED
NATS_BUILD_BIN=$NATS_BUILD_HOME/nats-server
NATS_DEBIAN_BIN=/usr/sbin/nats-server
NATS_BIN= # set by ensure_nats_server
NATS_VER=

# nats_choice: pinned | debian | path, from SCORE_WORKER_NATS_SERVER.
nats_choice() {
    case $NATS_CHOICE in
    current | latest | pinned) echo pinned ;;
    debian | apt | system) echo debian ;;
    /*) echo path ;;
    *)
        if [ "${NATS_CHOICE#v}" = "$NATS_PINNED" ] || [[ $NATS_PINNED == "${NATS_CHOICE#v}".* ]]; then
            echo pinned
        else
            die "SCORE_WORKER_NATS_SERVER=$NATS_CHOICE: expected current (= $NATS_PINNED, pinned in deploy/nats-server/go.mod), $NATS_PINNED, debian or /path/to/nats-server"
        fi
        ;;
    esac
}

binary_version() { "$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -n 1; }

nats_build_ok() { [ -f "$NATS_BUILD_HOME/.complete" ] && [ -x "$NATS_BUILD_BIN" ]; }

# Builds the pinned nats-server from the Go module proxy into the machine-wide cache, once.
ensure_nats_build() {
    nats_build_ok && return 0
    if ! command -v go >/dev/null; then
        apt_install golang-go ca-certificates # older than go.mod wants: GOTOOLCHAIN=auto fetches the right one
    fi
    mkdir -p "$NATS_BUILD_HOME"
    local fd t0 tmp=$NATS_BUILD_HOME/nats-server.partial.$$ v
    exec {fd}>"$NATS_BUILD_HOME/.lock" # shared by every clone on this machine
    flock -w 900 "$fd" || die "timed out waiting for $NATS_BUILD_HOME/.lock"
    if ! nats_build_ok; then
        t0=$(now_us)
        log "building nats-server v$NATS_PINNED from the Go module proxy into $NATS_BUILD_HOME (once per machine; $(go version 2>/dev/null | cut -d' ' -f3))"
        rm -f "$tmp"
        if ! (cd "$NATS_MOD" && CGO_ENABLED=0 GOTOOLCHAIN=auto go build -mod=readonly -buildvcs=false -trimpath \
            -ldflags='-s -w' -o "$tmp" github.com/nats-io/nats-server/v2) </dev/null >"$NATS_BUILD_HOME/build.log" 2>&1; then
            tail -n 30 "$NATS_BUILD_HOME/build.log" >&2
            rm -f "$tmp"
            die "go build of nats-server v$NATS_PINNED failed (log: $NATS_BUILD_HOME/build.log)"
        fi
        v=$(binary_version "$tmp")
        [ "$v" = "$NATS_PINNED" ] || die "built nats-server reports version '$v', expected $NATS_PINNED"
        mv -f "$tmp" "$NATS_BUILD_BIN"
        printf 'nats-server %s: built %s in %s with %s\n' "$v" "$(date -u +%FT%TZ)" "$(since "$t0")" \
            "$(go version 2>/dev/null)" >"$NATS_BUILD_HOME/.complete"
        log "built nats-server v$v in $(since "$t0")"
    fi
    exec {fd}>&-
}

# ensure_nats_server: sets NATS_BIN and NATS_VER for SCORE_WORKER_NATS_SERVER, building or installing once.
ensure_nats_server() {
    [ -n "$NATS_BIN" ] && return 0
    local choice
    choice=$(nats_choice) || exit 1
    case $choice in
    pinned)
        ensure_nats_build
        NATS_BIN=$NATS_BUILD_BIN
        ;;
    debian)
        [ -x "$NATS_DEBIAN_BIN" ] || apt_install nats-server
        [ -x "$NATS_DEBIAN_BIN" ] || die "apt-get installed nats-server but there is no $NATS_DEBIAN_BIN"
        NATS_BIN=$NATS_DEBIAN_BIN
        ;;
    path)
        [ -x "$NATS_CHOICE" ] || die "SCORE_WORKER_NATS_SERVER=$NATS_CHOICE is not an executable"
        NATS_BIN=$NATS_CHOICE
        ;;
    esac
    NATS_VER=$(binary_version "$NATS_BIN")
    [ -n "$NATS_VER" ] || die "$NATS_BIN --version printed no version"
}

# The version SCORE_WORKER_NATS_SERVER asks for (without building the pinned one, which states its version).
nats_wanted_version() {
    local choice
    choice=$(nats_choice) || exit 1
    if [ "$choice" = pinned ]; then echo "$NATS_PINNED"; else
        ensure_nats_server
        echo "$NATS_VER"
    fi
}

nats_summary() { # nats_summary VERB DETAIL
    printf '%-9s %-7s nats://%s:%s  monitor http://%s:%s  %s\n' nats "$1" "$HOST" "$NATS_PORT" "$HOST" "$NATS_MON_PORT" "$2"
}

start_nats() {
    local t0 pid i want running
    t0=$(now_us)
    want=$(nats_wanted_version)
    if pid=$(owned_pid nats); then
        running=$(nats_running_version || cat "$NATS_VERFILE" 2>/dev/null || echo '?')
        if [ "${SCORE_WORKER_FRESH_NATS:-0}" = 1 ] || [ "$running" != "$want" ]; then
            [ "$running" != "$want" ] && log "restarting our nats-server (pid $pid): version $running -> $want (SCORE_WORKER_NATS_SERVER=$NATS_CHOICE)"
            stop_server nats "$NATS_PIDFILE" >&2
        fi
    fi
    if nats_ping; then
        running=$(nats_running_version || echo '?')
        if pid=$(owned_pid nats); then
            nats_summary reused "v$running, already running (pid $pid, started by this script)"
        else
            [ "$running" != "$want" ] && log "WARNING: the nats-server on $HOST:$NATS_PORT is v$running, not v$want, and was not started by this script: using it as it is"
            nats_summary reused "v$running, already answering; not started by this script (down will leave it)"
        fi
        return 0
    fi
    if pid=$(owned_pid nats); then
        stopped "$pid" && die "nats-server (pid $pid) is SIGSTOPped; send it SIGCONT (kill -CONT $pid)"
        log "nats-server (pid $pid) is starting; waiting for it"
    else
        ensure_nats_server
        command -v curl >/dev/null || apt_install curl ca-certificates
        for i in "$NATS_PORT" "$NATS_MON_PORT"; do
            tcp_open "$i" && die "port $HOST:$i is taken by something that is not a NATS server we can use (pid $(listener_pid "$i" || echo '?'))"
        done
        NATS_DIR=$LOCAL/nats-$NATS_VER
        if [ "${SCORE_WORKER_FRESH_NATS:-0}" = 1 ]; then rm -rf "$NATS_DIR"; fi
        mkdir -p "$NATS_DIR"
        rotate_log "$NATS_LOG"
        echo "$NATS_VER" >"$NATS_VERFILE"
        t0=$(now_us) # report process start -> healthy; installs are logged separately
        launch "$NATS_LOG" "$NATS_PIDFILE" "$NATS_BIN" -js -a "$HOST" -p "$NATS_PORT" -m "$NATS_MON_PORT" -sd "$NATS_DIR"
        pid=$(cat "$NATS_PIDFILE")
    fi
    for ((i = 0; i < NATS_TIMEOUT * 10; i++)); do
        if nats_ping && nats_healthz; then
            i=$(cat "$NATS_VERFILE" 2>/dev/null || echo '?')
            nats_summary up "v$i, pid $pid, JetStream in ${LOCAL#"$ROOT"/}/nats-$i, ready in $(since "$t0")"
            return 0
        fi
        if ! alive "$pid"; then
            show_tail "$NATS_LOG"
            rm -f "$NATS_PIDFILE"
            die "nats-server exited during startup (log: $NATS_LOG)"
        fi
        sleep 0.1
    done
    show_tail "$NATS_LOG"
    stop_server nats "$NATS_PIDFILE" >&2
    die "nats-server did not become healthy within ${NATS_TIMEOUT}s (log: $NATS_LOG)"
}

# --------------------------------------------------------------------------------------------- Cassandra

cass_mode() {
    local m=noauth
    if [ "${SCORE_WORKER_CASSANDRA_AUTH:-0}" = 1 ]; then m=auth+authz; fi
    if [ "${SCORE_WORKER_CASSANDRA_TLS:-0}" = 1 ]; then m=$m+tls; fi
    if [ -n "${SCORE_WORKER_CASSANDRA_TOMBSTONE_FAILURE:-}" ]; then m=$m+tombstones$SCORE_WORKER_CASSANDRA_TOMBSTONE_FAILURE; fi
    echo "$m"
}

# cassandra_tls_files: a CA and a server certificate for 127.0.0.1 in $LOCAL/tls (once), the server's key and
# chain in one PEM file for Cassandra's PEMBasedSslContextFactory; clients trust $LOCAL/tls/ca.pem.
cassandra_tls_files() {
    local d=$LOCAL/tls
    [ -s "$d/server.pem" ] && [ -s "$d/ca.pem" ] && return 0
    command -v openssl >/dev/null || apt_install openssl
    mkdir -p "$d"
    (
        cd "$d"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 -subj "/CN=score-worker test CA" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1"
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.crt -days 3650 -extfile server.ext
        openssl pkcs8 -topk8 -nocrypt -in server.key -out server.pk8
        cat server.pk8 server.crt >server.pem.partial && mv server.pem.partial server.pem
    ) >"$LOCAL/tls.log" 2>&1 || { cat "$LOCAL/tls.log" >&2; die "openssl could not make the Cassandra TLS files (log: $LOCAL/tls.log)"; }
}

cass_summary() {
    printf '%-9s %-7s %s:%s  (CQL; storage port %s)  %s\n' cassandra "$1" "$HOST" "$CQL_PORT" "$STORAGE_PORT" "$2"
}

# cassandra_jvm_opts: CASS_ARGS = the JDK 17 options every Cassandra JVM here gets.
cassandra_jvm_opts() {
    local line
    local -a parts
    CASS_ARGS=()
    # Cassandra's own JDK 17 options (G1, JPMS --add-exports/--add-opens, netty): every line starting with '-'.
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%%#*}
        line=${line%$'\r'}
        [[ $line =~ ^[[:space:]]*- ]] || continue
        read -ra parts <<<"$line"
        CASS_ARGS+=("${parts[@]}")
    done <"$DEPLOY/jvm17-server.options"
    # bin/cassandra.in.sh adds these when the JDK has the modules (a JRE may not) (CASSANDRA-19001).
    local mods
    mods=$("$JAVA" --list-modules 2>/dev/null || true)
    if grep -q '^jdk.attach@' <<<"$mods"; then
        CASS_ARGS+=(--add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED)
    fi
    if grep -q '^jdk.compiler@' <<<"$mods"; then
        CASS_ARGS+=(--add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
            --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED)
    fi
}

# cassandra_daemon_args HEAP YAML DATA_DIR TMP_DIR [-D...]: appends heap, paths, the extra properties and
# the main class to CASS_ARGS.
cassandra_daemon_args() {
    local heap=$1 yaml=$2 data=$3 tmp=$4
    shift 4
    CASS_ARGS+=(
        "-Xms$heap" "-Xmx$heap" -Xss256k
        -ea -da:net.openhft... -XX:+UseThreadPriorities -XX:+UseTLAB -XX:+ResizeTLAB
        -XX:+PerfDisableSharedMem -XX:+ExitOnOutOfMemoryError
        -Djava.net.preferIPv4Stack=true -Dchronicle.analytics.disable=true
        "-Djava.io.tmpdir=$tmp" "-Djna.tmpdir=$tmp"
        "-Dcassandra.config=file://${yaml// /%20}"
        -Dcassandra-foreground=yes
        "-Dcassandra.storagedir=$data"
        "-Dcassandra.logdir=$data/logs"
        "-Dlogback.configurationFile=$DEPLOY/logback.xml"
        -Dcassandra.skip_wait_for_gossip_to_settle=0
        "$@"
        -cp "$CASS_LIB/*"
        org.apache.cassandra.service.CassandraDaemon
    )
}

cassandra_jvm_args() { # fills CASS_ARGS for the single server
    local yaml mode
    # No fsync of system tables: a faster start. Not for nodes that get SIGKILLed: a node killed after a schema
    # change can come back without the table and skip its commitlog mutations (seen on the cluster).
    local -a extra=(-Dcassandra.unsafesystem=true)
    cassandra_jvm_opts
    mode=$(cass_mode)
    # The instance's own copy of the yaml: its ports, and the authenticator of its mode.
    yaml=$LOCAL/cassandra.yaml
    sed -e "s/127\.0\.0\.1:[0-9]*\"/$HOST:$STORAGE_PORT\"/" -e "s/^storage_port:.*/storage_port: $STORAGE_PORT/" \
        -e "s/^listen_address:.*/listen_address: $HOST/" -e "s/^rpc_address:.*/rpc_address: $HOST/" \
        -e "s/^native_transport_port:.*/native_transport_port: $CQL_PORT/" "$DEPLOY/cassandra.yaml" >"$yaml"
    if [[ $mode == *+tls* ]]; then
        # TLS on the CQL port, optional: plaintext clients (the other tests of the pair) still connect.
        cassandra_tls_files
        printf '\nclient_encryption_options:\n  enabled: true\n  optional: true\n  require_client_auth: false\n  keystore: %s\n  ssl_context_factory:\n    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory\n' \
            "$LOCAL/tls/server.pem" >>"$yaml"
    fi
    if [[ $mode == auth* ]]; then
        # Passwords, and permissions that GRANT and REVOKE change (a revoked grant is a refusal of every write
        # the worker must ride out: tests/security/refusals.rs).
        sed -i -e 's/^authenticator:.*/authenticator: PasswordAuthenticator/' \
            -e 's/^authorizer:.*/authorizer: CassandraAuthorizer/' "$yaml"
        grep -q '^authenticator: PasswordAuthenticator' "$yaml" || die "could not set authenticator in $yaml"
        grep -q '^authorizer: CassandraAuthorizer' "$yaml" || die "could not set authorizer in $yaml"
        extra+=(-Dcassandra.superuser_setup_delay_ms=0)
    fi
    local tombstones=${SCORE_WORKER_CASSANDRA_TOMBSTONE_FAILURE:-}
    if [ -n "$tombstones" ]; then
        [[ $tombstones =~ ^[1-9][0-9]*$ ]] || die "SCORE_WORKER_CASSANDRA_TOMBSTONE_FAILURE must be a positive number, not '$tombstones'"
        printf '\n# SCORE_WORKER_CASSANDRA_TOMBSTONE_FAILURE\ntombstone_warn_threshold: %s\ntombstone_failure_threshold: %s\n' \
            $((tombstones / 2 > 0 ? tombstones / 2 : 1)) "$tombstones" >>"$yaml"
    fi
    cassandra_daemon_args "$CASS_HEAP" "$yaml" "$CASS_DATA" "$CASS_TMP" "${extra[@]}"
}

start_cassandra() {
    local t0 pid i mode running_mode fresh=${SCORE_WORKER_FRESH_DB:-0}
    t0=$(now_us)
    mode=$(cass_mode)
    if pid=$(owned_pid cassandra); then
        running_mode=$(cat "$CASS_MODEFILE" 2>/dev/null || echo noauth)
        if [ "$fresh" = 1 ] || [ "$running_mode" != "$mode" ]; then
            log "restarting our Cassandra (pid $pid): $([ "$fresh" = 1 ] && echo 'SCORE_WORKER_FRESH_DB=1' || echo "mode $running_mode -> $mode")"
            stop_server cassandra "$CASS_PIDFILE" >&2
        fi
    fi
    if cql_ping; then
        if pid=$(owned_pid cassandra); then
            cass_summary reused "already running (pid $pid, started by this script, $(cat "$CASS_MODEFILE" 2>/dev/null || echo noauth), rss $(rss_of "$pid"))"
        else
            [ "$fresh" = 1 ] && log "WARNING: SCORE_WORKER_FRESH_DB=1 ignored: the Cassandra on $HOST:$CQL_PORT was not started by this script"
            cass_summary reused "already answering; not started by this script (down will leave it)"
        fi
        return 0
    fi
    if pid=$(owned_pid cassandra); then
        stopped "$pid" && die "Cassandra (pid $pid) is SIGSTOPped; send it SIGCONT (kill -CONT $pid)"
        log "Cassandra (pid $pid) is starting; waiting for it"
    else
        for i in "$CQL_PORT" "$STORAGE_PORT"; do
            tcp_open "$i" && die "port $HOST:$i is taken by something that is not a Cassandra we can use (pid $(listener_pid "$i" || echo '?'))"
        done
        ensure_java17
        ensure_cassandra_jars
        if [ "$fresh" = 1 ]; then
            log "SCORE_WORKER_FRESH_DB=1: wiping $CASS_DATA"
            rm -rf "$CASS_DATA"
        fi
        rm -rf "$CASS_TMP"
        mkdir -p "$CASS_DATA" "$CASS_TMP"
        rotate_log "$CASS_LOG"
        cassandra_jvm_args
        echo "$mode" >"$CASS_MODEFILE"
        t0=$(now_us) # report JVM start -> CQL ready; a one-time jar fetch is logged separately
        launch "$CASS_LOG" "$CASS_PIDFILE" "$JAVA" "${CASS_ARGS[@]}"
        pid=$(cat "$CASS_PIDFILE")
    fi
    for ((i = 0; i < CASS_TIMEOUT * 4; i++)); do
        if cql_ping; then
            cass_summary up "pid $pid, JDK 17, Cassandra $CASS_VER, $mode, data .local/cassandra, ready in $(since "$t0"), rss $(rss_of "$pid")"
            return 0
        fi
        if ! alive "$pid"; then
            show_tail "$CASS_LOG"
            rm -f "$CASS_PIDFILE"
            die "Cassandra exited during startup (log: $CASS_LOG)"
        fi
        sleep 0.25
    done
    show_tail "$CASS_LOG"
    stop_server cassandra "$CASS_PIDFILE" >&2
    die "Cassandra did not answer CQL on $HOST:$CQL_PORT within ${CASS_TIMEOUT}s (log: $CASS_LOG)"
}

# ---------------------------------------------------------------------------------------------- clusters
# Three nats-servers and three Cassandra nodes on loopback, for the chaos scenarios that kill one node.
# Each node has its own pid file, log and state under $CL_DIR/{nats,cassandra}/.

CL_DIR=${SCORE_WORKER_CLUSTER_DIR:-}
CL_HOST=${SCORE_WORKER_CLUSTER_HOST:-}
CL_NATS_NAME=${SCORE_WORKER_CLUSTER_NATS_NAME:-}
CL_CASS_NAME=${SCORE_WORKER_CLUSTER_CASSANDRA_NAME:-}
CL_CQL_PORT=${SCORE_WORKER_CLUSTER_CQL_PORT:-}
CL_STORAGE_PORT=${SCORE_WORKER_CLUSTER_STORAGE_PORT:-}
CL_CASS_HEAP=${SCORE_WORKER_CLUSTER_CASSANDRA_HEAP:-}
read -ra CL_NATS_PORTS <<<"${SCORE_WORKER_CLUSTER_NATS_PORTS:-}"
read -ra CL_ROUTE_PORTS <<<"${SCORE_WORKER_CLUSTER_ROUTE_PORTS:-}"
read -ra CL_MON_PORTS <<<"${SCORE_WORKER_CLUSTER_MON_PORTS:-}"
read -ra CL_ADDRESSES <<<"${SCORE_WORKER_CLUSTER_ADDRESSES:-}"
read -ra CL_JMX_PORTS <<<"${SCORE_WORKER_CLUSTER_JMX_PORTS:-}"
CL_NODES=(1 2 3) # CL_TOKENS below is for three
CL_NATS_TIMEOUT=$((NATS_TIMEOUT * 2))
# Murmur3 tokens -2^63 + k * 2^64/3: one token per node, each node primary for a third of the ring.
CL_TOKENS=(-9223372036854775808 -3074457345618258603 3074457345618258602)
CL_WHY= # why the last cl_cass_converged said no
CL_LAYOUT_FILE=$CL_DIR/cassandra/layout # the datacenter layout the nodes' data was created with: 1 or 2
CL_DCS_FILE=$CL_DIR/cassandra/datacenters # with layout 2: each node's datacenter, space-separated

need_cluster() {
    local v
    for v in "$CL_DIR" "$CL_HOST" "$CL_CQL_PORT" "$CL_STORAGE_PORT" "$CL_CASS_HEAP"; do
        [ -n "$v" ] || die "no 3-node cluster given (run it through cargo xtask)"
    done
    for v in "${#CL_NATS_PORTS[@]}" "${#CL_ROUTE_PORTS[@]}" "${#CL_MON_PORTS[@]}" "${#CL_ADDRESSES[@]}" "${#CL_JMX_PORTS[@]}"; do
        [ "$v" = 3 ] || die "the cluster in environments.toml must have 3 nodes"
    done
    HOST=$CL_HOST
    NATS_CHOICE=${SCORE_WORKER_CLUSTER_NATS_SERVER:-$NATS_CHOICE}
}
cl_nats_port() { echo "${CL_NATS_PORTS[$1 - 1]}"; }
cl_nats_route() { echo "${CL_ROUTE_PORTS[$1 - 1]}"; }
cl_nats_mon() { echo "${CL_MON_PORTS[$1 - 1]}"; }
cl_cass_addr() { echo "${CL_ADDRESSES[$1 - 1]}"; }
cl_jmx_port() { echo "${CL_JMX_PORTS[$1 - 1]}"; }
cl_addr_node() { # cl_addr_node ADDRESS: n1..n3, or the address when it is no node's
    local i
    for i in "${CL_NODES[@]}"; do [ "$(cl_cass_addr "$i")" = "$1" ] && echo "n$i" && return 0; done
    echo "$1"
}
cl_pidfile() { echo "$CL_DIR/$1/n$2.pid"; }
cl_log() { echo "$CL_DIR/$1/n$2.log"; }
cl_nats_conf() { echo "$CL_DIR/nats/n$1.conf"; }
cl_cass_yaml() { echo "$CL_DIR/cassandra/n$1.yaml"; }

cl_kind() { # cl_kind ARG: validates nats|cassandra
    case ${1:-} in
    nats | cassandra) echo "$1" ;;
    *) die "expected nats or cassandra, got '${1:-}'" ;;
    esac
}
cl_node() { # cl_node ARG: 1..3 or n1..n3 -> 1..3
    case ${1:-} in
    1 | 2 | 3 | n1 | n2 | n3) echo "${1#n}" ;;
    *) die "expected a node number 1-3, got '${1:-}'" ;;
    esac
}

# cl_pid KIND N: node N's pid if it is alive and is the node this script started.
cl_pid() {
    case $1 in
    nats) pidfile_pid "$(cl_pidfile nats "$2")" "$(cl_nats_conf "$2")" ;;
    cassandra) pidfile_pid "$(cl_pidfile cassandra "$2")" "$(cl_cass_yaml "$2")" ;;
    esac
}

cl_answers() { # cl_answers KIND N
    case $1 in
    nats) nats_ping "$(cl_nats_port "$2")" ;;
    cassandra) cql_ping "$(cl_cass_addr "$2")" "$CL_CQL_PORT" ;;
    esac
}

take_cluster_lock() {
    mkdir -p "$CL_DIR" "$LOCAL"
    exec {CL_LOCK_FD}>"$CL_DIR/.lock"
    flock -w 600 "$CL_LOCK_FD" || die "another scripts/services.sh holds $CL_DIR/.lock for 10 minutes"
}

# cl_stop KIND SIGNAL N...: SIGTERM (clean) or SIGKILL the given nodes at once, wait until all are gone.
cl_stop() {
    local kind=$1 sig=$2 n pid t0 i j left
    shift 2
    local -a pids=() names=()
    t0=$(now_us)
    for n in "$@"; do
        if pid=$(cl_pid "$kind" "$n"); then
            kill "-$sig" "$pid" 2>/dev/null || true
            [ "$sig" = KILL ] || kill -CONT "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$n")
        else
            rm -f "$(cl_pidfile "$kind" "$n")"
            if cl_answers "$kind" "$n"; then
                printf '%-9s n%s  left running: it answers but was not started by this script\n' "$kind" "$n"
            else
                printf '%-9s n%s  not running\n' "$kind" "$n"
            fi
        fi
    done
    [ "${#pids[@]}" -gt 0 ] || return 0
    local -a took=() # per node: how long it took to exit
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        left=0
        for j in "${!pids[@]}"; do
            [ -n "${took[$j]:-}" ] && continue
            if alive "${pids[$j]}"; then left=$((left + 1)); else took[j]=$(since "$t0"); fi
        done
        [ "$left" -gt 0 ] || break
        sleep 0.1
    done
    for i in "${!pids[@]}"; do
        pid=${pids[$i]}
        n=${names[$i]}
        if [ -z "${took[$i]:-}" ]; then
            log "$kind n$n (pid $pid) still running after ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((j = 0; j < 100; j++)); do
                alive "$pid" || break
                sleep 0.1
            done
            alive "$pid" && die "$kind n$n (pid $pid) survived SIGKILL"
            printf '%-9s n%s  stopped (pid %s, SIGKILL after SIG%s, %s)\n' "$kind" "$n" "$pid" "$sig" "$(since "$t0")"
        else
            printf '%-9s n%s  %s (pid %s, SIG%s, %s)\n' "$kind" "$n" "$([ "$sig" = KILL ] && echo killed || echo stopped)" \
                "$pid" "$sig" "${took[$i]}"
        fi
        rm -f "$(cl_pidfile "$kind" "$n")"
    done
}

# ---- NATS cluster

cl_nats_write_conf() { # cl_nats_write_conf N STORE_DIR
    local n=$1 r
    {
        printf '# Generated by scripts/services.sh: node n%s of the loopback NATS cluster.\n' "$n"
        printf 'server_name: n%s\nlisten: %s:%s\nhttp: %s:%s\n' "$n" "$HOST" "$(cl_nats_port "$n")" "$HOST" "$(cl_nats_mon "$n")"
        printf 'jetstream {\n  store_dir: "%s"\n}\n' "$2"
        printf 'cluster {\n  name: %s\n  listen: %s:%s\n  routes: [\n' "$CL_NATS_NAME" "$HOST" "$(cl_nats_route "$n")"
        for r in "${CL_NODES[@]}"; do printf '    nats-route://%s:%s\n' "$HOST" "$(cl_nats_route "$r")"; done
        printf '  ]\n}\n'
    } >"$(cl_nats_conf "$n")"
}

cl_nats_launch() { # cl_nats_launch N: start node N (not running), no wait
    local n=$1 p store
    ensure_nats_server
    command -v curl >/dev/null || apt_install curl ca-certificates
    for p in "$(cl_nats_port "$n")" "$(cl_nats_route "$n")" "$(cl_nats_mon "$n")"; do
        tcp_open "$p" && die "port $HOST:$p (nats n$n) is taken by something this script did not start (pid $(listener_pid "$p" || echo '?'))"
    done
    store=$CL_DIR/nats/$NATS_VER/n$n
    mkdir -p "$store"
    cl_nats_write_conf "$n" "$store"
    echo "$NATS_VER" >"$CL_DIR/nats/n$n.version"
    rotate_log "$(cl_log nats "$n")"
    launch "$(cl_log nats "$n")" "$(cl_pidfile nats "$n")" "$NATS_BIN" -c "$(cl_nats_conf "$n")"
}

cl_nats_leader() { # the JetStream meta leader as node N sees it
    command -v curl >/dev/null || return 1
    curl -sf -m 3 "http://$HOST:$(cl_nats_mon "$1")/jsz" 2>/dev/null | tr -d ' \n' |
        sed -n 's/.*"meta_cluster":{[^}]*"leader":"\([^"]*\)".*/\1/p' | grep .
}

# cl_nats_wait N T0: until node N's /healthz is ok (JetStream current with the meta leader and its streams).
cl_nats_wait() {
    local n=$1 t0=$2 pid deadline
    pid=$(cl_pid nats "$n") || die "nats n$n is not running"
    deadline=$(($(now_us) + CL_NATS_TIMEOUT * 1000000))
    while [ "$(now_us)" -lt "$deadline" ]; do
        if nats_ping "$(cl_nats_port "$n")" && nats_healthz "$(cl_nats_mon "$n")"; then
            printf '%-9s n%s  up  nats://%s:%s  v%s, pid %s, healthy in %s, rss %s\n' nats "$n" "$HOST" "$(cl_nats_port "$n")" \
                "$(cat "$CL_DIR/nats/n$n.version" 2>/dev/null)" "$pid" "$(since "$t0")" "$(rss_of "$pid")"
            return 0
        fi
        if ! alive "$pid"; then
            show_tail "$(cl_log nats "$n")"
            die "nats n$n exited during startup (log: $(cl_log nats "$n"))"
        fi
        sleep 0.2 # each failed /healthz is a WRN line in the node's log
    done
    show_tail "$(cl_log nats "$n")"
    die "nats n$n did not become healthy within ${CL_NATS_TIMEOUT}s (log: $(cl_log nats "$n"))"
}

cl_nats_up() {
    local n want pid v t0 stale=0
    mkdir -p "$CL_DIR/nats"
    want=$(nats_wanted_version)
    for n in "${CL_NODES[@]}"; do
        if cl_pid nats "$n" >/dev/null; then
            v=$(cat "$CL_DIR/nats/n$n.version" 2>/dev/null || echo '?')
            [ "$v" = "$want" ] || stale=1
        fi
    done
    if [ "$stale" = 1 ]; then
        log "the NATS cluster runs another version than v$want: stopping it (each version has its own store)"
        cl_stop nats TERM "${CL_NODES[@]}" >&2
    fi
    if [ "${SCORE_WORKER_FRESH_CLUSTER:-0}" = 1 ]; then
        cl_stop nats TERM "${CL_NODES[@]}" >&2
        log "SCORE_WORKER_FRESH_CLUSTER=1: wiping $CL_DIR/nats"
        rm -rf "$CL_DIR/nats"
        mkdir -p "$CL_DIR/nats"
    fi
    t0=$(now_us)
    # All three at once: JetStream needs a quorum (2 of 3) before any node reports healthy.
    for n in "${CL_NODES[@]}"; do
        if pid=$(cl_pid nats "$n"); then
            stopped "$pid" && die "nats n$n (pid $pid) is SIGSTOPped; send it SIGCONT (kill -CONT $pid)"
        else
            cl_nats_launch "$n"
        fi
    done
    for n in "${CL_NODES[@]}"; do cl_nats_wait "$n" "$t0"; done
    printf '%-9s cluster %s: %s nodes, JetStream meta leader %s, up in %s\n' nats "$CL_NATS_NAME" "${#CL_NODES[@]}" \
        "$(cl_nats_leader 1 || echo '?')" "$(since "$t0")"
}

# ---- Cassandra cluster

cl_cass_write_yaml() { # cl_cass_write_yaml N: deploy/cassandra/cassandra.yaml with this node's address, ports, token
    local n=$1 addr yaml seeds="" r key
    addr=$(cl_cass_addr "$n")
    yaml=$(cl_cass_yaml "$n")
    for r in "${CL_NODES[@]}"; do seeds+="${seeds:+,}$(cl_cass_addr "$r"):$CL_STORAGE_PORT"; done
    {
        printf '# Generated by scripts/services.sh from deploy/cassandra/cassandra.yaml: node n%s of the loopback cluster.\n' "$n"
        sed -e "s/^cluster_name:.*/cluster_name: $CL_CASS_NAME/" \
            -e "s/^num_tokens:.*/num_tokens: 1\ninitial_token: ${CL_TOKENS[$((n - 1))]}/" \
            -e "s/- seeds: .*/- seeds: \"$seeds\"/" \
            -e "s/^listen_address:.*/listen_address: $addr/" \
            -e "s/^rpc_address:.*/rpc_address: $addr/" \
            -e "s/^storage_port:.*/storage_port: $CL_STORAGE_PORT/" \
            -e "s/^native_transport_port:.*/native_transport_port: $CL_CQL_PORT/" \
            -e "s/^hinted_handoff_enabled:.*/hinted_handoff_enabled: true   # as on Scylla: a node back from an outage gets the writes it missed/" \
            "$DEPLOY/cassandra.yaml"
        printf '\n# Cluster only. Before serving CQL, a node waits for its known peers; on a warm start of n1 none is up yet.\n'
        printf 'block_for_peers_timeout_in_secs: 2\n'
    } >"$yaml"
    for key in "cluster_name: $CL_CASS_NAME" "initial_token: ${CL_TOKENS[$((n - 1))]}" "listen_address: $addr" \
        "rpc_address: $addr" "storage_port: $CL_STORAGE_PORT" "native_transport_port: $CL_CQL_PORT" \
        "hinted_handoff_enabled: true" "auto_bootstrap: false" "      - seeds: \"$seeds\""; do
        grep -qxF -- "$key" <(sed 's/[[:space:]]*#.*//' "$yaml") || die "could not set '$key' in $yaml (deploy/cassandra/cassandra.yaml changed?)"
    done
}

cl_cass_layout() { # the layout the cluster's data has (1 when none is recorded: SimpleSnitch, as before)
    cat "$CL_LAYOUT_FILE" 2>/dev/null || echo 1
}

cl_cass_dc() { # cl_cass_dc N: node N's datacenter in the two-datacenter layout (recorded by cl_cass_up)
    local -a dcs
    read -ra dcs <"$CL_DCS_FILE" || die "no $CL_DCS_FILE: start the cluster with cargo xtask up cluster:two-dc"
    [ -n "${dcs[$1 - 1]:-}" ] || die "$CL_DCS_FILE names no datacenter for node $1"
    echo "${dcs[$1 - 1]}"
}

cl_cass_launch() { # cl_cass_launch N: start node N (not running), no wait
    local n=$1 addr data tmp p rackdc
    local -a snitch=()
    addr=$(cl_cass_addr "$n")
    for p in "$CL_CQL_PORT" "$CL_STORAGE_PORT"; do
        tcp_open "$p" "$addr" && die "port $addr:$p (cassandra n$n) is taken by something this script did not start (pid $(listener_pid "$p" || echo '?'))"
    done
    p=$(cl_jmx_port "$n")
    tcp_open "$p" && die "port $HOST:$p (JMX of cassandra n$n) is taken (pid $(listener_pid "$p" || echo '?'))"
    ensure_java17
    ensure_cassandra_jars
    data=$CL_DIR/cassandra/n$n
    tmp=$CL_DIR/cassandra/n$n-tmp
    rm -rf "$tmp"
    mkdir -p "$data" "$tmp"
    cl_cass_write_yaml "$n"
    if [ "$(cl_cass_layout)" = 2 ]; then
        rackdc=$CL_DIR/cassandra/n$n-rackdc.properties
        printf 'dc=%s\nrack=rack1\n' "$(cl_cass_dc "$n")" >"$rackdc"
        sed -i 's/^endpoint_snitch:.*/endpoint_snitch: GossipingPropertyFileSnitch/' "$(cl_cass_yaml "$n")"
        snitch=("-Dcassandra-rackdc.properties=file://$rackdc")
    fi
    rotate_log "$(cl_log cassandra "$n")"
    cassandra_jvm_opts
    # JMX for nodetool only, local (loopback) only; without the port, no JMX listener at all.
    # ring_delay 5 s, not 30: the first node's shadow gossip round waits that long for the other seeds, not yet
    # started (measured: n1 took 40 s to CQL instead of ~12 s).
    cassandra_daemon_args "$CL_CASS_HEAP" "$(cl_cass_yaml "$n")" "$data" "$tmp" "-Dcassandra.jmx.local.port=$p" \
        -Dcassandra.ring_delay_ms=5000 ${snitch[@]+"${snitch[@]}"}
    launch "$(cl_log cassandra "$n")" "$(cl_pidfile cassandra "$n")" "$JAVA" "${CASS_ARGS[@]}"
}

# cl_cass_converged: every running node answers CQL and gossips every other running node as NORMAL, at the
# generation that node reports for itself (so a restarted node has been seen again), with one schema version.
# A CQL-only stand-in for "nodetool status says UN everywhere". Sets CL_WHY when it says no.
cl_cass_converged() {
    local j k rows addr g st sch self schema=
    local -a up=()
    local -A view=()
    for j in "${CL_NODES[@]}"; do
        if cl_pid cassandra "$j" >/dev/null; then
            cql_ping "$(cl_cass_addr "$j")" "$CL_CQL_PORT" || {
                CL_WHY="n$j does not answer CQL yet"
                return 1
            }
            up+=("$j")
        fi
    done
    [ "${#up[@]}" -gt 0 ] || {
        CL_WHY="no node is running"
        return 1
    }
    for j in "${up[@]}"; do
        rows=$(xtask cql "$(cl_cass_addr "$j"):$CL_CQL_PORT" \
            'SELECT address, generation, status_with_port, "schema" FROM system_views.gossip_info' 2>&1) || {
            CL_WHY="n$j: gossip_info query failed: $rows"
            return 1
        }
        while IFS=$'\t' read -r addr g st sch; do
            [ -n "$addr" ] && view[$j,$addr]="$g $st $sch"
        done <<<"$rows"
    done
    for j in "${up[@]}"; do
        for k in "${up[@]}"; do
            self=${view[$k,$(cl_cass_addr "$k")]:-}
            read -r g st sch <<<"${view[$j,$(cl_cass_addr "$k")]:-}"
            if [ -z "$g" ] || [ "$g" != "${self%% *}" ]; then
                CL_WHY="n$j has not seen n$k (generation ${g:-none}, n$k says ${self%% *})"
                return 1
            fi
            [[ $st == NORMAL* ]] || {
                CL_WHY="n$j sees n$k as '${st:-?}'"
                return 1
            }
            : "${schema:=$sch}"
            [ "$sch" = "$schema" ] || {
                CL_WHY="schema versions differ (n$j sees n$k at $sch, not $schema)"
                return 1
            }
        done
    done
}

# cl_cass_wait N T0: until node N answers CQL and the running nodes have converged.
cl_cass_wait() {
    local n=$1 t0=$2 pid='' deadline cql_at='' i
    # Right after a launch the pid file names the launching subshell until it execs the JVM (seconds on a loaded
    # machine: a cluster-start once died here with the node starting fine).
    for ((i = 0; i < 100; i++)); do
        pid=$(cl_pid cassandra "$n") && break
        alive "$(tr -dc 0-9 <"$(cl_pidfile cassandra "$n")" 2>/dev/null)" || break
        sleep 0.1
    done
    [ -n "$pid" ] || die "cassandra n$n is not running"
    deadline=$(($(now_us) + CASS_TIMEOUT * 1000000))
    while [ "$(now_us)" -lt "$deadline" ]; do
        if [ -z "$cql_at" ] && cql_ping "$(cl_cass_addr "$n")" "$CL_CQL_PORT"; then cql_at=$(since "$t0"); fi
        if [ -n "$cql_at" ] && cl_cass_converged; then
            printf '%-9s n%s  up  %s:%s  pid %s, CQL in %s, UN (gossip) in %s, rss %s\n' cassandra "$n" "$(cl_cass_addr "$n")" \
                "$CL_CQL_PORT" "$pid" "$cql_at" "$(since "$t0")" "$(rss_of "$pid")"
            return 0
        fi
        if ! alive "$pid"; then
            show_tail "$(cl_log cassandra "$n")"
            rm -f "$(cl_pidfile cassandra "$n")"
            die "cassandra n$n exited during startup (log: $(cl_log cassandra "$n"))"
        fi
        sleep 0.25
    done
    show_tail "$(cl_log cassandra "$n")"
    die "cassandra n$n not ready within ${CASS_TIMEOUT}s: ${CL_WHY:-no CQL} (log: $(cl_log cassandra "$n"))"
}

cl_cass_start() { # cl_cass_start N: start node N unless running, wait until the cluster has converged
    local n=$1 pid t0
    t0=$(now_us)
    if pid=$(cl_pid cassandra "$n"); then
        stopped "$pid" && die "cassandra n$n (pid $pid) is SIGSTOPped; send it SIGCONT (kill -CONT $pid)"
    elif cl_answers cassandra "$n"; then
        die "$(cl_cass_addr "$n"):$CL_CQL_PORT answers CQL but is not a node this script started"
    else
        cl_cass_launch "$n"
        t0=$(now_us) # report JVM start -> ready; installs are logged separately
    fi
    cl_cass_wait "$n" "$t0"
}

cl_cass_up() {
    local n t0 want
    mkdir -p "$CL_DIR/cassandra"
    want=${SCORE_WORKER_CLUSTER_DCS:-1}
    case $want in 1 | 2) ;; *) die "SCORE_WORKER_CLUSTER_DCS must be 1 or 2, got '$want'" ;; esac
    if [ "$(cl_cass_layout)" != "$want" ]; then
        # A node refuses to start in another datacenter than its data says: the other layout starts afresh.
        cl_stop cassandra TERM "${CL_NODES[@]}" >&2
        log "the Cassandra cluster has $(cl_cass_layout) datacenter(s), $want wanted: wiping $CL_DIR/cassandra"
        rm -rf "$CL_DIR/cassandra"
        mkdir -p "$CL_DIR/cassandra"
    fi
    echo "$want" >"$CL_LAYOUT_FILE"
    if [ "$want" != 1 ]; then echo "${SCORE_WORKER_CLUSTER_NODE_DCS:?no datacenters for the layout}" >"$CL_DCS_FILE"; fi
    if [ "${SCORE_WORKER_FRESH_CLUSTER:-0}" = 1 ]; then
        cl_stop cassandra TERM "${CL_NODES[@]}" >&2
        log "SCORE_WORKER_FRESH_CLUSTER=1: wiping $CL_DIR/cassandra"
        rm -rf "$CL_DIR/cassandra"
        mkdir -p "$CL_DIR/cassandra"
        echo "$want" >"$CL_LAYOUT_FILE"
        if [ "$want" != 1 ]; then echo "$SCORE_WORKER_CLUSTER_NODE_DCS" >"$CL_DCS_FILE"; fi
    fi
    ensure_java17
    ensure_cassandra_jars
    t0=$(now_us)
    # One after another: each node joins the ring (NORMAL in every running node's gossip) before the next starts.
    for n in "${CL_NODES[@]}"; do cl_cass_start "$n"; done
    printf '%-9s cluster %s: %s nodes, CQL %s:%s (all addresses the same port), heap %s each, %s, up in %s\n' cassandra \
        "$CL_CASS_NAME" "${#CL_NODES[@]}" "$(cl_cass_addr 1)-3" "$CL_CQL_PORT" "$CL_CASS_HEAP" \
        "$([ "$want" = 2 ] && echo 'datacenters dc1 (n1, n2) and dc2 (n3)' || echo 'one datacenter')" "$(since "$t0")"
}

# ---- status, env

cl_gossip() { # cl_gossip N: "n1=NORMAL n2=NORMAL ..." as node N's gossip has them
    local a st
    xtask cql "$(cl_cass_addr "$1"):$CL_CQL_PORT" 'SELECT address, status_with_port FROM system_views.gossip_info' 2>/dev/null |
        while IFS=$'\t' read -r a st; do
            echo "$(cl_addr_node "$a")=${st%%[!A-Za-z]*}"
        done | sort | tr '\n' ' ' | sed 's/ $//'
}

cl_status_line() { # cl_status_line KIND N
    local kind=$1 n=$2 pid how where
    case $kind in
    nats) where="nats://$HOST:$(cl_nats_port "$n")" ;;
    cassandra) where="$(cl_cass_addr "$n"):$CL_CQL_PORT" ;;
    esac
    pid=$(cl_pid "$kind" "$n") || pid=
    if cl_answers "$kind" "$n"; then
        if [ -n "$pid" ]; then how="pid $pid, rss $(rss_of "$pid")"; else how="not started by this script"; fi
        if [ "$kind" = nats ]; then
            how="v$(nats_running_version "$(cl_nats_port "$n")" || echo '?'), $how, $(nats_healthz "$(cl_nats_mon "$n")" && echo healthy || echo 'not healthy'), meta leader $(cl_nats_leader "$n" || echo none)"
        else
            how="$how, gossip: $(cl_gossip "$n")"
        fi
        printf '%-9s n%s  up      %s  (%s)\n' "$kind" "$n" "$where" "$how"
        return 0
    fi
    if [ -n "$pid" ]; then
        if stopped "$pid"; then
            printf '%-9s n%s  frozen  %s  (pid %s is SIGSTOPped)\n' "$kind" "$n" "$where" "$pid"
        else
            printf '%-9s n%s  starting %s  (pid %s alive, not answering)\n' "$kind" "$n" "$where" "$pid"
        fi
    else
        printf '%-9s n%s  down    %s\n' "$kind" "$n" "$where"
    fi
    return 1
}

cl_env() {
    local n urls="" nodes=""
    for n in "${CL_NODES[@]}"; do
        urls+="${urls:+,}nats://$HOST:$(cl_nats_port "$n")"
        nodes+="${nodes:+,}\"$(cl_cass_addr "$n"):$CL_CQL_PORT\""
    done
    printf "export SCORE_WORKER__NATS__URL='%s'\n" "$urls"
    printf "export SCORE_WORKER__SCYLLA__NODES='[%s]'\n" "$nodes"
}

cl_kinds() { # cl_kinds [KIND]: the kinds a cluster command applies to
    if [ -n "${1:-}" ]; then cl_kind "$1"; else printf '%s\n' nats cassandra; fi
}

# ------------------------------------------------------------------------------------------ PostgreSQL
# The source of `score-worker migrate-postgres` and its tests: Debian's `postgresql` package, a cluster
# of our own in $LOCAL/postgres/data on 127.0.0.1:$PG_PORT (TCP only, trust authentication for user
# postgres, fsync off: a test server), run as the `postgres` OS user because the server refuses root.
# TLS is on (ssl = on), with the server certificate of $LOCAL/tls (the CA clients trust: $LOCAL/tls/ca.pem,
# the same files as Cassandra's TLS, copied beside ssl_cert_file); plain-text clients are still accepted. The settings live in
# $PG_DATA/score-worker.conf, included by postgresql.conf, so `ALTER SYSTEM SET ssl = off` + reload (a test
# of a server without TLS) overrides them until `ALTER SYSTEM RESET ssl`.
# One already answering on the port is reused and left alone by `down`.
PG_PORT=${SCORE_WORKER_PG_PORT:-} # empty: the set has no PostgreSQL
PG_HOME=$LOCAL/postgres
PG_DATA=$PG_HOME/data
PG_LOG=$PG_HOME/server.log
PG_TIMEOUT=${SCORE_WORKER_PG_TIMEOUT:-60}

pg_bin() { printf '%s\n' /usr/lib/postgresql/*/bin | grep -v '[*]' | sort -V | tail -n 1; }
pg_ping() {
    local bin
    bin=$(pg_bin)
    if [ -n "$bin" ] && [ -x "$bin/pg_isready" ]; then
        "$bin/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 3 >/dev/null 2>&1
    else
        tcp_open "$PG_PORT"
    fi
}
as_postgres() { # as_postgres CMD...: as the postgres user, holding none of our fds (the lock above all)
    (
        for fd in /proc/"$BASHPID"/fd/*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
        done 2>/dev/null
        if [ "$(id -u)" = 0 ]; then exec runuser -u postgres -- "$@"; else exec "$@"; fi
    )
}
pg_owned_pid() { # the postmaster of our data dir, if it runs
    local pid
    pid=$(head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && alive "$pid" && echo "$pid"
}

start_postgres() {
    local t0 bin pid
    t0=$(now_us)
    if pg_ping; then
        printf '%-9s reused  %s:%s  (already answering%s)\n' postgres "$HOST" "$PG_PORT" \
            "$(pid=$(pg_owned_pid) && echo ", pid $pid, started by this script")"
        return 0
    fi
    bin=$(pg_bin)
    if [ -z "$bin" ] || [ ! -x "$bin/pg_ctl" ]; then
        apt_install postgresql
        bin=$(pg_bin)
        if [ -z "$bin" ] || [ ! -x "$bin/pg_ctl" ]; then die "no PostgreSQL server binaries after installing postgresql"; fi
    fi
    if [ "$(id -u)" = 0 ]; then id postgres >/dev/null 2>&1 || die "the postgresql package created no postgres user"; fi
    mkdir -p "$PG_HOME"
    [ "$(id -u)" = 0 ] && chown postgres: "$PG_HOME"
    if [ ! -f "$PG_DATA/PG_VERSION" ]; then
        log "initdb $PG_DATA"
        as_postgres "$bin/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
            >"$PG_HOME/initdb.log" 2>&1 || { tail -n 20 "$PG_HOME/initdb.log" >&2; die "initdb failed"; }
    fi
    postgres_tls_files
    # A postmaster.pid left by a killed server is removed by the server itself when its pid is gone.
    as_postgres "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$PG_TIMEOUT" -s \
        -o "-p $PG_PORT -c listen_addresses=$HOST -c unix_socket_directories='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start </dev/null >/dev/null 2>&1 || { show_tail "$PG_LOG"; die "PostgreSQL did not start on $HOST:$PG_PORT"; }
    pg_ping || { show_tail "$PG_LOG"; die "PostgreSQL started but does not answer on $HOST:$PG_PORT"; }
    printf '%-9s started %s:%s  (pid %s, %s, TLS on, CA %s, in %s)\n' postgres "$HOST" "$PG_PORT" \
        "$(pg_owned_pid || echo '?')" "$("$bin/postgres" --version | sed 's/^postgres (PostgreSQL) /v/')" \
        "$LOCAL/tls/ca.pem" "$(since "$t0")"
}

# postgres_tls_files: the test CA's server certificate (cassandra_tls_files makes it once) as the postgres
# user's files (the server refuses a key others can read), and ssl = on in an included file of our own.
postgres_tls_files() {
    local d=$PG_HOME/tls conf=$PG_DATA/score-worker.conf
    cassandra_tls_files
    mkdir -p "$d"
    cp "$LOCAL/tls/server.crt" "$d/server.crt"
    # Beside the server's certificate, so a client that can `SHOW ssl_cert_file` finds the CA to trust.
    cp "$LOCAL/tls/ca.pem" "$d/ca.pem"
    cp "$LOCAL/tls/server.key" "$d/server.key"
    chmod 600 "$d/server.key"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$d"
    printf "ssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\n" "$d/server.crt" "$d/server.key" >"$conf"
    [ "$(id -u)" = 0 ] && chown postgres: "$conf"
    grep -qxF "include_if_exists = 'score-worker.conf'" "$PG_DATA/postgresql.conf" ||
        echo "include_if_exists = 'score-worker.conf'" >>"$PG_DATA/postgresql.conf"
}

stop_postgres() {
    local pid t0
    if ! pid=$(pg_owned_pid); then
        if pg_ping; then
            printf '%-9s left running: it answers but was not started by this script\n' postgres
        else
            printf '%-9s not running\n' postgres
        fi
        return 0
    fi
    t0=$(now_us)
    as_postgres "$(pg_bin)/pg_ctl" -D "$PG_DATA" -m fast -w -t "$STOP_TIMEOUT" -s stop </dev/null >/dev/null 2>&1 ||
        { kill -KILL "$pid" 2>/dev/null || true; }
    printf '%-9s stopped (pid %s, %s)\n' postgres "$pid" "$(since "$t0")"
}

postgres_status() {
    local pid
    if pg_ping; then
        if pid=$(pg_owned_pid); then
            printf '%-9s up      %s:%s  (pid %s, started by this script, rss %s)\n' postgres "$HOST" "$PG_PORT" "$pid" "$(rss_of "$pid")"
        else
            printf '%-9s up      %s:%s  (not started by this script)\n' postgres "$HOST" "$PG_PORT"
        fi
        return 0
    fi
    printf '%-9s down\n' postgres
    return 1
}

# ------------------------------------------------------------------------------------------------ status

status_line() { # status_line NAME
    local name=$1 pid how
    if pid=$(owned_pid "$name"); then how="pid $pid, started by this script"; else
        pid=
        how="not started by this script"
    fi
    if { [ "$name" = nats ] && nats_ping; } || { [ "$name" = cassandra ] && cql_ping; }; then
        [ "$name" = cassandra ] && [ -n "$pid" ] && how="$how, $(cat "$CASS_MODEFILE" 2>/dev/null || echo noauth), rss $(rss_of "$pid")"
        [ "$name" = nats ] && how="v$(nats_running_version || echo '?'), $how${pid:+, rss $(rss_of "$pid")}"
        printf '%-9s up      %s  (%s)\n' "$name" "$([ "$name" = nats ] && echo "nats://$HOST:$NATS_PORT" || echo "$HOST:$CQL_PORT")" "$how"
        return 0
    fi
    if [ -n "$pid" ]; then
        if stopped "$pid"; then
            printf '%-9s frozen  pid %s is SIGSTOPped (not answering)\n' "$name" "$pid"
        else
            printf '%-9s not answering yet (pid %s alive: starting or hung)\n' "$name" "$pid"
        fi
    else
        printf '%-9s down\n' "$name"
    fi
    return 1
}

print_pid() { # print_pid NAME PORT
    local pid
    pid=$(owned_pid "$1") || pid=$(listener_pid "$2") || die "$1 is not running"
    echo "$pid"
}

# -------------------------------------------------------------------------------------------------- main

cmd=${1:-}
case $cmd in
cluster-*) need_cluster ;;
nats-bin | bootstrap | -h | --help | help) ;;
*) need_set ;;
esac
case $cmd in
up)
    take_lock
    start_nats
    start_cassandra
    if [ -n "$PG_PORT" ]; then start_postgres; fi
    ;;
down)
    take_lock
    rc=0
    stop_server cassandra "$CASS_PIDFILE" || rc=1
    stop_server nats "$NATS_PIDFILE" || rc=1
    if [ -n "$PG_PORT" ]; then stop_postgres || rc=1; fi
    exit "$rc"
    ;;
status)
    rc=0
    status_line nats || rc=3
    status_line cassandra || rc=3
    if [ -n "$PG_PORT" ]; then postgres_status || rc=3; fi
    exit "$rc"
    ;;
start-postgres) [ -n "$PG_PORT" ] || die "set ${SCORE_WORKER_ENVIRONMENT:-?} has no PostgreSQL"; take_lock && start_postgres ;;
stop-postgres) take_lock && stop_postgres ;;
start-nats) take_lock && start_nats ;;
stop-nats) take_lock && stop_server nats "$NATS_PIDFILE" ;;
start-cassandra) take_lock && start_cassandra ;;
stop-cassandra) take_lock && stop_server cassandra "$CASS_PIDFILE" ;;
nats-pid) print_pid nats "$NATS_PORT" ;;
cassandra-pid) print_pid cassandra "$CQL_PORT" ;;
nats-bin)
    ensure_nats_server
    echo "$NATS_BIN"
    ;;
bootstrap)
    t0=$(now_us)
    ensure_java17
    ensure_cassandra_jars
    ensure_nats_server
    printf 'bootstrap: JDK 17 %s, Cassandra %s jars in %s, nats-server v%s at %s (%s)\n' "$JAVA_HOME17" "$CASS_VER" \
        "$CASS_LIB" "$NATS_VER" "$NATS_BIN" "$(since "$t0")"
    ;;
cluster-up)
    take_cluster_lock
    for kind in $(cl_kinds "${2:-}"); do
        if [ "$kind" = nats ]; then cl_nats_up; else cl_cass_up; fi
    done
    ;;
cluster-down)
    take_cluster_lock
    for kind in $(cl_kinds "${2:-}"); do cl_stop "$kind" TERM "${CL_NODES[@]}"; done
    ;;
cluster-status)
    rc=0
    for kind in $(cl_kinds "${2:-}"); do
        for n in "${CL_NODES[@]}"; do cl_status_line "$kind" "$n" || rc=3; done
    done
    exit "$rc"
    ;;
cluster-kill | cluster-stop)
    kind=$(cl_kind "${2:-}")
    n=$(cl_node "${3:-}")
    take_cluster_lock
    cl_pid "$kind" "$n" >/dev/null || die "$kind n$n is not running (not started by this script)"
    cl_stop "$kind" "$([ "$cmd" = cluster-kill ] && echo KILL || echo TERM)" "$n"
    ;;
cluster-start)
    kind=$(cl_kind "${2:-}")
    n=$(cl_node "${3:-}")
    take_cluster_lock
    if [ "$kind" = nats ]; then
        if ! cl_pid nats "$n" >/dev/null; then
            t0=$(now_us)
            cl_nats_launch "$n"
        else
            t0=$(now_us)
        fi
        cl_nats_wait "$n" "$t0"
    else
        cl_cass_start "$n"
    fi
    ;;
cluster-pid)
    kind=$(cl_kind "${2:-}")
    n=$(cl_node "${3:-}")
    cl_pid "$kind" "$n" || die "$kind n$n is not running (not started by this script)"
    ;;
cluster-env) cl_env ;;
cluster-nodetool)
    n=$(cl_node "${2:-}")
    shift 2
    ensure_java17
    cassandra_jars_ok || die "no Cassandra jars in $CASS_LIB yet (run cluster-up)"
    cassandra_jvm_opts # the JPMS flags the tools need too
    exec "$JAVA" "${CASS_ARGS[@]}" -Xmx128m -Djava.net.preferIPv4Stack=true "-Dlogback.configurationFile=$DEPLOY/logback.xml" \
        -cp "$CASS_LIB/*" org.apache.cassandra.tools.NodeTool -h "$HOST" -p "$(cl_jmx_port "$n")" "$@"
    ;;
-h | --help | help)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    ;;
*)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    die "unknown command '${cmd}'"
    ;;
esac
