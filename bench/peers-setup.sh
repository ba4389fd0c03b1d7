#!/usr/bin/env bash
# Installs the peers of `bkg-bench peers` at pinned versions, inside target/ (nothing global,
# nothing in ~): supervisord (PyPI `supervisor`) into a venv at target/peers-venv, pm2 (npm) into
# target/pm2. Idempotent: an install that is already at the pinned version is kept.
#
#   bench/peers-setup.sh          # prints the two paths bkg-bench needs, one per line
#
# Needs python3 (with the venv module) and npm. Reaches PyPI and the npm registry through pip
# and npm as configured on this machine.
set -euo pipefail

SUPERVISOR_VERSION=4.3.0
PM2_VERSION=7.0.4

cd "$(dirname "$0")/.."
root="$PWD/target"
venv="$root/peers-venv"
pm2dir="$root/pm2"
mkdir -p "$root"

die() {
    echo "peers-setup: $*" >&2
    exit 1
}

command -v python3 >/dev/null || die "python3 not found (supervisord is a Python program)"
command -v npm >/dev/null || die "npm not found (pm2 is installed with npm; node is needed to run it)"
command -v node >/dev/null || die "node not found (pm2 runs on node)"

# supervisord
have=""
if [[ -x "$venv/bin/supervisord" ]]; then
    have="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("supervisor"))' 2>/dev/null || true)"
fi
if [[ "$have" != "$SUPERVISOR_VERSION" ]]; then
    echo "peers-setup: installing supervisor==$SUPERVISOR_VERSION into $venv" >&2
    python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    if ! "$venv/bin/pip" install --disable-pip-version-check --quiet "supervisor==$SUPERVISOR_VERSION" >&2; then
        die "pip could not install supervisor==$SUPERVISOR_VERSION: is PyPI reachable from here?"
    fi
fi

# pm2
have=""
if [[ -f "$pm2dir/node_modules/pm2/package.json" ]]; then
    have="$(node -p "require('$pm2dir/node_modules/pm2/package.json').version" 2>/dev/null || true)"
fi
if [[ "$have" != "$PM2_VERSION" ]]; then
    echo "peers-setup: installing pm2@$PM2_VERSION into $pm2dir" >&2
    mkdir -p "$pm2dir"
    if ! npm install --prefix "$pm2dir" --no-audit --no-fund --loglevel=error "pm2@$PM2_VERSION" >&2; then
        die "npm could not install pm2@$PM2_VERSION: is the npm registry reachable from here?"
    fi
fi

[[ -x "$venv/bin/supervisord" ]] || die "$venv/bin/supervisord missing after the install"
[[ -x "$pm2dir/node_modules/.bin/pm2" ]] || die "$pm2dir/node_modules/.bin/pm2 missing after the install"
echo "$venv/bin"
echo "$pm2dir/node_modules/.bin/pm2"
