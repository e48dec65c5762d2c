#!/usr/bin/env bash
# The part of the local set-up that must stay shell: Debian packages with apt, JDK 17, the Cassandra jars
# from Maven Central (deploy/cassandra/pom.xml) and the pinned nats-server built with Go from the module
# proxy (deploy/nats-server/go.mod). The jars and the binary go into a cache shared by every clone on the
# machine (SCORE_WORKER_CACHE, default ~/.cache/score-worker), each fetched or built once, under a lock.
# `cargo xtask` calls it when something is missing; it starts nothing. Each command prints one path.
#
# Usage: scripts/bootstrap.sh COMMAND
#   apt PACKAGE...     install Debian packages (sudo -n unless root); prints nothing
#   java17             the JAVA_HOME of a JDK 17 (SCORE_WORKER_JAVA_HOME, /usr/lib/jvm/*; openjdk-17 if none)
#   cassandra-jars     the directory of the Cassandra jars of deploy/cassandra/pom.xml
#   nats-build         the nats-server binary of the version deploy/nats-server/go.mod pins
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
CACHE=${SCORE_WORKER_CACHE:-${HOME:?}/.cache/score-worker}
mkdir -p "$CACHE"

log() { printf 'bootstrap: %s\n' "$*" >&2; }
die() {
    printf 'bootstrap: ERROR: %s\n' "$*" >&2
    exit 1
}
took() { echo "$((SECONDS - $1))s"; }

apt_install() {
    command -v apt-get >/dev/null || die "need to install $* but apt-get is not available"
    local sudo=() t0=$SECONDS
    [ "$(id -u)" = 0 ] || sudo=(sudo -n)
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get install $*"
    { "${sudo[@]}" apt-get -qq -o DPkg::Lock::Timeout=300 update &&
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "$@"; } \
        </dev/null >"$CACHE/apt.log" 2>&1 ||
        { tail -n 20 "$CACHE/apt.log" >&2; die "apt-get install $* failed (log: $CACHE/apt.log)"; }
    log "installed $* in $(took "$t0")"
}

java_major() { "$1" -version 2>&1 | sed -n 's/.* version "\(1\.\)\{0,1\}\([0-9]*\).*/\2/p' | head -n 1; }

find_java17() {
    local cand
    for cand in ${SCORE_WORKER_JAVA_HOME:+"$SCORE_WORKER_JAVA_HOME"} /usr/lib/jvm/*17* /usr/lib/jvm/*; do
        if [ -x "$cand/bin/java" ] && [ "$(java_major "$cand/bin/java")" = 17 ]; then
            echo "$cand"
            return 0
        fi
    done
    return 1
}

java17() {
    find_java17 && return 0
    apt_install openjdk-17-jre-headless
    find_java17 || die "no JDK 17 under /usr/lib/jvm even after installing openjdk-17-jre-headless"
}

# once DIR WHAT CHECK BUILD: runs BUILD (which fills DIR) unless CHECK passes, under DIR/.lock.
once() {
    local dir=$1 what=$2 check=$3 build=$4 fd t0=$SECONDS
    "$check" && return 0
    mkdir -p "$dir"
    exec {fd}>"$dir/.lock"
    flock -w 900 "$fd" || die "timed out waiting for $dir/.lock"
    if ! "$check"; then
        log "$what (once per machine, into $dir)"
        "$build"
        log "done in $(took "$t0")"
    fi
    exec {fd}>&-
}

DEPLOY=$ROOT/deploy/cassandra
CASS_VER=$(sed -n 's:.*<cassandra.version>\([^<]*\)</cassandra.version>.*:\1:p' "$DEPLOY/pom.xml" | head -n 1)
CASS_HOME=$CACHE/cassandra-$CASS_VER

jars_ok() { [ -f "$CASS_HOME/.complete" ] && [ -f "$CASS_HOME/lib/cassandra-all-$CASS_VER.jar" ]; }
fetch_jars() {
    local tmp=$CASS_HOME/lib.partial.$$ java_home
    java_home=$(java17)
    command -v mvn >/dev/null || apt_install maven
    rm -rf "$tmp" "${CASS_HOME:?}/lib"
    JAVA_HOME=$java_home mvn -B -q -f "$DEPLOY/pom.xml" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime </dev/null >"$CASS_HOME/mvn.log" 2>&1 ||
        { tail -n 30 "$CASS_HOME/mvn.log" >&2; rm -rf "$tmp"; die "mvn copy-dependencies failed (log: $CASS_HOME/mvn.log)"; }
    [ -f "$tmp/cassandra-all-$CASS_VER.jar" ] || die "mvn succeeded but fetched no cassandra-all-$CASS_VER.jar"
    mv "$tmp" "$CASS_HOME/lib"
    printf 'cassandra-all %s: %s jars, fetched %s\n' "$CASS_VER" "$(find "$CASS_HOME/lib" -name '*.jar' | wc -l)" \
        "$(date -u +%FT%TZ)" >"$CASS_HOME/.complete"
}

NATS_MOD=$ROOT/deploy/nats-server
NATS_PINNED=$(sed -n 's:^[[:space:]]*github.com/nats-io/nats-server/v2 v\([0-9][0-9.]*\).*:\1:p' "$NATS_MOD/go.mod" | head -n 1)
NATS_HOME=$CACHE/nats-server-$NATS_PINNED

nats_ok() { [ -f "$NATS_HOME/.complete" ] && [ -x "$NATS_HOME/nats-server" ]; }
build_nats() {
    local tmp=$NATS_HOME/nats-server.partial.$$ v
    # Debian's Go may be older than go.mod wants: GOTOOLCHAIN=auto fetches the right one from the proxy.
    command -v go >/dev/null || apt_install golang-go ca-certificates
    (cd "$NATS_MOD" && CGO_ENABLED=0 GOTOOLCHAIN=auto go build -mod=readonly -buildvcs=false -trimpath \
        -ldflags='-s -w' -o "$tmp" github.com/nats-io/nats-server/v2) </dev/null >"$NATS_HOME/build.log" 2>&1 ||
        { tail -n 30 "$NATS_HOME/build.log" >&2; rm -f "$tmp"; die "go build failed (log: $NATS_HOME/build.log)"; }
    v=$("$tmp" --version | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p')
    [ "$v" = "$NATS_PINNED" ] || die "the built nats-server reports version '$v', not $NATS_PINNED"
    mv -f "$tmp" "$NATS_HOME/nats-server"
    printf 'nats-server %s: built %s with %s\n' "$v" "$(date -u +%FT%TZ)" "$(go version)" >"$NATS_HOME/.complete"
}

case ${1:-} in
apt)
    shift
    [ $# -gt 0 ] || die "apt: no package named"
    apt_install "$@"
    ;;
java17) java17 ;;
cassandra-jars)
    [ -n "$CASS_VER" ] || die "cannot read <cassandra.version> from $DEPLOY/pom.xml"
    once "$CASS_HOME" "fetching the Cassandra $CASS_VER jars from Maven Central" jars_ok fetch_jars
    echo "$CASS_HOME/lib"
    ;;
nats-build)
    [ -n "$NATS_PINNED" ] || die "cannot read the nats-server version from $NATS_MOD/go.mod"
    once "$NATS_HOME" "building nats-server v$NATS_PINNED from the Go module proxy" nats_ok build_nats
    echo "$NATS_HOME/nats-server"
    ;;
*)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
