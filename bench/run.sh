#!/usr/bin/env bash
# Builds release and runs every benchmark of bkg-bench; the report (machine, command, markdown
# table) goes to stdout, progress to stderr. Extra arguments go to `bkg-bench` before the
# subcommand, e.g. `bench/run.sh --runs 5`.
#
#   bench/run.sh > /tmp/bench.md
set -euo pipefail

cd "$(dirname "$0")/.."
cargo build --release -p bkg-bench -p bkg >&2

# Benchmark a private copy: another build replacing target/release/bkg mid-run would otherwise
# change the binary between (or during) benchmarks. Built-in plug-ins are spawned from it too.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp target/release/bkg "$work/bkg"

args=""
if (($#)); then args="$(printf ' %q' "$@")"; fi
cpu="$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $(uname -r), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- tree: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes'), release profile"
echo "- command: \`bench/run.sh$args\` (runs \`bkg-bench --bkg <private copy of target/release/bkg>$args all\`)"
echo
target/release/bkg-bench --bkg "$work/bkg" "$@" all
echo
echo "- load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
