#!/usr/bin/env bash
# The embedded llm side by side with llama.cpp (llama-cpp-python) on the same GGUF file and the
# same greedy prompt, in one run (issue 6): time to first token and decode tokens/s, bkg with 1
# and 4 concurrent streams, llama.cpp with one (a llama-cpp-python `Llama` serves one sequence).
#
#     bench/llm.sh                     # builds release, installs llama-cpp-python (compiles llama.cpp)
#     LLAMA_VENV=/path/to/venv bench/llm.sh   # reuse a venv that already has llama_cpp
#
# Prints one line per measurement; BENCHMARKS.md has the table.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON="llama-cpp-python==0.3.36"
venv="${LLAMA_VENV:-target/llama-venv}"
model_dir="${BKG_MODEL_CACHE:-$HOME/.cache/bkg/models}/SmolLM2-135M-Instruct"
model="$model_dir/SmolLM2-135M-Instruct.Q4_1.gguf"

cargo build --release -p bkg >&2
scripts/fetch-models.sh smollm2 >/dev/null
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null; then
    echo "installing $LLAMA_CPP_PYTHON into $venv (compiles llama.cpp: several minutes)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$LLAMA_CPP_PYTHON" >&2 \
        || { echo "cannot install $LLAMA_CPP_PYTHON (is PyPI reachable?)" >&2; exit 1; }
fi

tmp="$(mktemp -d)"
daemon_pid=""
cleanup() {
    [[ -n "$daemon_pid" ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
# A private copy: a concurrent build cannot swap the binary (built-ins are spawned from it).
cp target/release/bkg "$tmp/bkg"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
password="bench-admin-password-$RANDOM$RANDOM"
cat > "$tmp/plugins.json" <<EOF
{"plugins": [
  {"name": "apikeys", "builtin": "apikeys", "required": true},
  {"name": "llm", "builtin": "llm",
   "config": {"model_path": "$model", "auto_fetch": false, "max_concurrent": 4, "max_queue": 8}}
]}
EOF
ADMIN_PASSWORD="$password" BKG_LOG_FORMAT=json "$tmp/bkg" serve --listen "127.0.0.1:$port" \
    --data-dir "$tmp/data" --registry "$tmp/plugins.json" 2>"$tmp/daemon.log" &
daemon_pid=$!

token="$(python3 - "$port" "$password" <<'EOF'
import json, sys, time, urllib.request
base, password = f"http://127.0.0.1:{sys.argv[1]}", sys.argv[2]
deadline = time.monotonic() + 300
while True:
    try:
        health = json.load(urllib.request.urlopen(base + "/health", timeout=5))
        states = health.get("plugins", {})
        if states and all(state == "ready" for state in states.values()):
            break
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit("the daemon did not get ready within 300 s")
    time.sleep(0.5)
req = urllib.request.Request(base + "/auth/login", json.dumps({"user": "admin", "password": password}).encode(),
                             {"content-type": "application/json"})
print(json.load(urllib.request.urlopen(req))["token"])
EOF
)"

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); model $(basename "$model")"
echo -n "bkg 1 stream:   "; python3 tests/py/llm_bench.py "http://127.0.0.1:$port" "$token" 1 128 3
echo -n "bkg 4 streams:  "; python3 tests/py/llm_bench.py "http://127.0.0.1:$port" "$token" 4 128 2
kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=""
echo "llama.cpp ($("$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')), 1 stream, 2 threads:"
"$venv/bin/python" tests/py/llama_cpp_bench.py "$model"
