#!/usr/bin/env bash
# Usage: benches/build-baseline.sh REV DIR
# Builds REV's release binary once, in a throwaway git worktree, into DIR/baseline-<sha>/score-worker, and
# prints that path (progress goes to stderr). A second call for the same commit reuses the binary; the
# Cargo target directory DIR/baseline-target is shared between revisions so dependencies build once.
set -euo pipefail
rev=${1:?usage: build-baseline.sh REV DIR}
dir=${2:?usage: build-baseline.sh REV DIR}
sha=$(git rev-parse --short=12 "$rev^{commit}")
out=$dir/baseline-$sha
if [ ! -x "$out/score-worker" ]; then
    tree=$(mktemp -d "${TMPDIR:-/tmp}/score-worker-baseline.XXXXXX")
    trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true; rm -rf "$tree"' EXIT
    git worktree add --detach --quiet "$tree" "$sha"
    echo "bench: building $rev ($sha) in a throwaway worktree; the binary goes to $out" >&2
    (cd "$tree" && CARGO_TARGET_DIR="$dir/baseline-target" "${CARGO:-cargo}" build --release --locked --bin score-worker >&2)
    mkdir -p "$out"
    cp "$dir/baseline-target/release/score-worker" "$out/score-worker"
fi
echo "$out/score-worker"
