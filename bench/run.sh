#!/usr/bin/env bash
# Builds release and runs every benchmark of bkg-bench; the report (machine, command, markdown
# table) goes to stdout, progress to stderr. Extra arguments go to `bkg-bench` before the
# subcommand, e.g. `bench/run.sh --runs 5`.
#
#   bench/run.sh > /tmp/bench.md
#   bench/run.sh peers > /tmp/peers.md    # bkg vs supervisord vs pm2 (installs them first)
#   bench/run.sh relay > /tmp/relay.md    # llm openai backend: latency added per streamed token
#
# `peers` first runs bench/peers-setup.sh (pinned supervisord and pm2 under target/); arguments
# after it go to `bkg-bench peers` (`bench/run.sh peers --runs 1 --idle-s 10`); likewise for
# `relay` (`bench/run.sh relay --tokens 400 --streams 8`; `all` runs it too, with the defaults).
set -euo pipefail

cd "$(dirname "$0")/.."
bench="all"
if [[ "${1:-}" == "relay" ]]; then
    bench="relay"
    shift
elif [[ "${1:-}" == "peers" ]]; then
    bench="peers"
    shift
    setup="$(bench/peers-setup.sh)"
    supervisord_bin="$(sed -n 1p <<<"$setup")"
    pm2_bin="$(sed -n 2p <<<"$setup")"
fi
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
if [[ "$bench" == "peers" ]]; then
    echo "- command: \`bench/run.sh peers$args\` (runs \`bkg-bench --bkg <private copy of target/release/bkg> peers$args\`)"
    echo "- peers: supervisord $("$supervisord_bin/supervisord" --version) (Python $("$supervisord_bin/python" -c 'import platform; print(platform.python_version())')), pm2 $(node -p "require('$(dirname "$(dirname "$pm2_bin")")/pm2/package.json').version") (node $(node --version))"
    echo
    target/release/bkg-bench --bkg "$work/bkg" peers --supervisord "$supervisord_bin/supervisord" --pm2 "$pm2_bin" "$@"
elif [[ "$bench" == "relay" ]]; then
    echo "- command: \`bench/run.sh relay$args\` (runs \`bkg-bench --bkg <private copy of target/release/bkg> relay$args\`)"
    echo
    target/release/bkg-bench --bkg "$work/bkg" relay "$@"
else
    echo "- command: \`bench/run.sh$args\` (runs \`bkg-bench --bkg <private copy of target/release/bkg>$args all\`)"
    echo
    target/release/bkg-bench --bkg "$work/bkg" "$@" all
fi
echo
echo "- load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
