#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, builds every binary
# the integration tests spawn, then runs all tests with nextest (cargo test works too).
set -euo pipefail
cd "$(dirname "$0")/.."

# systemd-analyze verifies systemd/bkg.service in the tests.
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "installing systemd (for systemd-analyze)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi

# Plug-in binaries (bkg-plugin-echo, the conformance kit's sample plug-in) must exist next to
# the daemon before the integration tests run.
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
