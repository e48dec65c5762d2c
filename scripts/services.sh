#!/usr/bin/env bash
# Installs, starts and stops the two real servers that score-worker's local runs and tests need:
#
#   nats-server 2.9 with JetStream   nats://127.0.0.1:4222   monitoring http://127.0.0.1:8222
#   Apache Cassandra 5.0 (CQL)       127.0.0.1:9042          storage port 7000 (a ScyllaDB stand-in)
#
# Usage: scripts/services.sh COMMAND
#   up                 install what is missing, start both servers (or reuse ones already answering),
#                      wait until healthy, print one summary line per server
#   down               stop the servers this script started (SIGTERM, up to 20 s, then SIGKILL)
#   status             print whether each server answers; exit 0 if both do, 3 otherwise
#   start-nats | stop-nats | start-cassandra | stop-cassandra     control one server
#   nats-pid | cassandra-pid                                      print its pid (for SIGSTOP/SIGCONT tests)
#
# State lives in <repo>/.local/ (gitignored): nats/ (JetStream store), cassandra/ (data, commitlog, ...),
# *.log, *.pid. The Cassandra jars are fetched once from Maven Central (deploy/cassandra/pom.xml) into a
# cache outside the repo, so fresh clones on the same machine reuse them.
#
# Environment:
#   SCORE_WORKER_CACHE=DIR            jar cache (default ~/.cache/score-worker)
#   SCORE_WORKER_FRESH_DB=1           wipe .local/cassandra before starting Cassandra (restarts it if ours)
#   SCORE_WORKER_FRESH_NATS=1         wipe .local/nats (the JetStream store) before starting NATS
#   SCORE_WORKER_CASSANDRA_AUTH=1     run Cassandra with PasswordAuthenticator (user cassandra/cassandra)
#   SCORE_WORKER_CASSANDRA_HEAP=1g    Cassandra heap (-Xms = -Xmx)
#   SCORE_WORKER_CASSANDRA_TIMEOUT=180, SCORE_WORKER_NATS_TIMEOUT=30   startup timeouts in seconds
#   SCORE_WORKER_JAVA_HOME=DIR        JDK 17 to use (otherwise /usr/lib/jvm/*17*, installed if absent)
#   SCORE_WORKER_LOCAL=DIR            state directory (default <repo>/.local); a second instance of both servers
#                                     runs beside the first with its own DIR and ports:
#   SCORE_WORKER_NATS_PORT=4222 SCORE_WORKER_NATS_MON_PORT=8222 SCORE_WORKER_CQL_PORT=9042 SCORE_WORKER_STORAGE_PORT=7000
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
LOCAL=${SCORE_WORKER_LOCAL:-$ROOT/.local}
DEPLOY=$ROOT/deploy/cassandra
HOME=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
CACHE=${SCORE_WORKER_CACHE:-$HOME/.cache/score-worker}

HOST=127.0.0.1
NATS_PORT=${SCORE_WORKER_NATS_PORT:-4222}
NATS_MON_PORT=${SCORE_WORKER_NATS_MON_PORT:-8222}
CQL_PORT=${SCORE_WORKER_CQL_PORT:-9042}
STORAGE_PORT=${SCORE_WORKER_STORAGE_PORT:-7000}

NATS_TIMEOUT=${SCORE_WORKER_NATS_TIMEOUT:-30}
CASS_TIMEOUT=${SCORE_WORKER_CASSANDRA_TIMEOUT:-180}
CASS_HEAP=${SCORE_WORKER_CASSANDRA_HEAP:-1g}
STOP_TIMEOUT=20

NATS_DIR=$LOCAL/nats
NATS_LOG=$LOCAL/nats.log
NATS_PIDFILE=$LOCAL/nats.pid
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
    log "apt-get install $*"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "$@" \
        </dev/null >>"$LOCAL/apt.log" 2>&1 ||
        { tail -n 20 "$LOCAL/apt.log" >&2; die "apt-get install $* failed (log: $LOCAL/apt.log)"; }
}

# alive PID: the process exists and is not a zombie (PID 1 here may not reap orphans).
alive() {
    local st
    [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

stopped() { # stopped PID: in state T (SIGSTOP) / t
    local st
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
    [ "$st" = T ] || [ "$st" = t ]
}

# owned_pid NAME: the pid from .local/NAME.pid if that process is alive and is what we started.
owned_pid() {
    local pidfile pat pid
    case $1 in
    nats) pidfile=$NATS_PIDFILE pat=nats-server ;;
    cassandra) pidfile=$CASS_PIDFILE pat=org.apache.cassandra.service.CassandraDaemon ;;
    esac
    [ -s "$pidfile" ] || return 1
    pid=$(tr -dc 0-9 <"$pidfile")
    alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pat" || return 1
    echo "$pid"
}

# listener_pid PORT: pid of whatever listens on 127.0.0.1:PORT (needs ss), for servers we did not start.
listener_pid() {
    command -v ss >/dev/null || return 1
    ss -Htlnp "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1 | grep .
}

tcp_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# A NATS server greets every new connection with "INFO {...}".
nats_ping() {
    local h
    h=$( (exec 3<>"/dev/tcp/$HOST/$NATS_PORT" && timeout 3 head -c 5 <&3) 2>/dev/null) || return 1
    [ "$h" = "INFO " ]
}

# JetStream is ready once /healthz says so (without curl, the INFO greeting has to do).
nats_healthz() {
    command -v curl >/dev/null || return 0
    curl -sf -m 3 "http://$HOST:$NATS_MON_PORT/healthz" >/dev/null 2>&1
}

# CQL OPTIONS request (protocol v4: version 0x04, flags 0, stream 0, opcode 0x05 OPTIONS, body length 0);
# a live node answers with a SUPPORTED frame, header 84 00 0000 06.
cql_ping() {
    local h
    h=$( (
        exec 3<>"/dev/tcp/$HOST/$CQL_PORT" || exit 1
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

nats_summary() { # nats_summary VERB DETAIL
    printf '%-9s %-7s nats://%s:%s  monitor http://%s:%s  %s\n' nats "$1" "$HOST" "$NATS_PORT" "$HOST" "$NATS_MON_PORT" "$2"
}

start_nats() {
    local t0 pid i
    t0=$(now_us)
    if [ "${SCORE_WORKER_FRESH_NATS:-0}" = 1 ] && owned_pid nats >/dev/null; then
        stop_server nats "$NATS_PIDFILE" >&2
    fi
    if nats_ping; then
        if pid=$(owned_pid nats); then
            nats_summary reused "already running (pid $pid, started by this script)"
        else
            nats_summary reused "already answering; not started by this script (down will leave it)"
        fi
        return 0
    fi
    if pid=$(owned_pid nats); then
        stopped "$pid" && die "nats-server (pid $pid) is SIGSTOPped; send it SIGCONT (kill -CONT $pid)"
        log "nats-server (pid $pid) is starting; waiting for it"
    else
        if ! command -v nats-server >/dev/null; then apt_install nats-server; fi
        command -v curl >/dev/null || apt_install curl ca-certificates
        for i in "$NATS_PORT" "$NATS_MON_PORT"; do
            tcp_open "$i" && die "port $HOST:$i is taken by something that is not a NATS server we can use (pid $(listener_pid "$i" || echo '?'))"
        done
        if [ "${SCORE_WORKER_FRESH_NATS:-0}" = 1 ]; then rm -rf "$NATS_DIR"; fi
        mkdir -p "$NATS_DIR"
        rotate_log "$NATS_LOG"
        t0=$(now_us) # report process start -> healthy; installs are logged separately
        launch "$NATS_LOG" "$NATS_PIDFILE" nats-server -js -a "$HOST" -p "$NATS_PORT" -m "$NATS_MON_PORT" -sd "$NATS_DIR"
        pid=$(cat "$NATS_PIDFILE")
    fi
    for ((i = 0; i < NATS_TIMEOUT * 10; i++)); do
        if nats_ping && nats_healthz; then
            nats_summary up "pid $pid, JetStream in .local/nats, ready in $(since "$t0")"
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

cass_mode() { if [ "${SCORE_WORKER_CASSANDRA_AUTH:-0}" = 1 ]; then echo auth; else echo noauth; fi; }

cass_summary() {
    printf '%-9s %-7s %s:%s  (CQL; storage port %s)  %s\n' cassandra "$1" "$HOST" "$CQL_PORT" "$STORAGE_PORT" "$2"
}

cassandra_jvm_args() { # fills CASS_ARGS
    local line yaml mode
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
    mode=$(cass_mode)
    # The instance's own copy of the yaml: its ports, and the authenticator of its mode.
    yaml=$LOCAL/cassandra.yaml
    sed -e "s/127.0.0.1:7000/127.0.0.1:$STORAGE_PORT/" -e "s/^storage_port:.*/storage_port: $STORAGE_PORT/" \
        -e "s/^native_transport_port:.*/native_transport_port: $CQL_PORT/" "$DEPLOY/cassandra.yaml" >"$yaml"
    if [ "$mode" = auth ]; then
        sed -i 's/^authenticator:.*/authenticator: PasswordAuthenticator/' "$yaml"
        grep -q '^authenticator: PasswordAuthenticator' "$yaml" || die "could not set authenticator in $yaml"
        CASS_ARGS+=(-Dcassandra.superuser_setup_delay_ms=0)
    fi
    CASS_ARGS+=(
        "-Xms$CASS_HEAP" "-Xmx$CASS_HEAP" -Xss256k
        -ea -da:net.openhft... -XX:+UseThreadPriorities -XX:+UseTLAB -XX:+ResizeTLAB
        -XX:+PerfDisableSharedMem -XX:+ExitOnOutOfMemoryError
        -Djava.net.preferIPv4Stack=true -Dchronicle.analytics.disable=true
        "-Djava.io.tmpdir=$CASS_TMP" "-Djna.tmpdir=$CASS_TMP"
        "-Dcassandra.config=file://${yaml// /%20}"
        -Dcassandra-foreground=yes
        "-Dcassandra.storagedir=$CASS_DATA"
        "-Dcassandra.logdir=$CASS_DATA/logs"
        "-Dlogback.configurationFile=$DEPLOY/logback.xml"
        -Dcassandra.skip_wait_for_gossip_to_settle=0
        -Dcassandra.unsafesystem=true
        -cp "$CASS_LIB/*"
        org.apache.cassandra.service.CassandraDaemon
    )
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

# ------------------------------------------------------------------------------------------------ status

status_line() { # status_line NAME
    local name=$1 pid how
    if pid=$(owned_pid "$name"); then how="pid $pid, started by this script"; else
        pid=
        how="not started by this script"
    fi
    if { [ "$name" = nats ] && nats_ping; } || { [ "$name" = cassandra ] && cql_ping; }; then
        [ "$name" = cassandra ] && [ -n "$pid" ] && how="$how, $(cat "$CASS_MODEFILE" 2>/dev/null || echo noauth), rss $(rss_of "$pid")"
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
up)
    take_lock
    start_nats
    start_cassandra
    ;;
down)
    take_lock
    rc=0
    stop_server cassandra "$CASS_PIDFILE" || rc=1
    stop_server nats "$NATS_PIDFILE" || rc=1
    exit "$rc"
    ;;
status)
    rc=0
    status_line nats || rc=3
    status_line cassandra || rc=3
    exit "$rc"
    ;;
start-nats) take_lock && start_nats ;;
stop-nats) take_lock && stop_server nats "$NATS_PIDFILE" ;;
start-cassandra) take_lock && start_cassandra ;;
stop-cassandra) take_lock && stop_server cassandra "$CASS_PIDFILE" ;;
nats-pid) print_pid nats "$NATS_PORT" ;;
cassandra-pid) print_pid cassandra "$CQL_PORT" ;;
-h | --help | help)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    ;;
*)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    die "unknown command '${cmd}'"
    ;;
esac
