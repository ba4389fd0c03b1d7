#!/usr/bin/env bash
# Retrieval evaluation: recall@5 and MRR@10 per mode (bm25, vector, hybrid) over the HTML of
# "The Rust Programming Language" that ships with the toolchain, with eval/rust-book.jsonl.
#
#   eval/run.sh [extra bkg-rag-eval options, e.g. --json /tmp/eval.json]
#
# Any question file in the same format works: QUESTIONS=my.jsonl CORPUS=/docs eval/run.sh
# (CORPUS defaults to the book; the exclusions below only matter for the book).
set -euo pipefail
cd "$(dirname "$0")/.."

CORPUS="${CORPUS:-$(rustc --print sysroot)/share/doc/rust/html/book}"
QUESTIONS="${QUESTIONS:-eval/rust-book.jsonl}"
if [[ ! -d "$CORPUS" ]]; then
    echo "eval: no corpus at $CORPUS (install the rust-docs component: rustup component add rust-docs)" >&2
    exit 1
fi
scripts/fetch-models.sh minilm >/dev/null
cargo build --release -p bkg-plugin-rag --bin bkg-rag-eval
# The book directory also holds the whole book as one page (print.html), the old editions'
# redirect pages and the site's scripts: excluded so that each question has one right chapter.
exec target/release/bkg-rag-eval --questions "$QUESTIONS" --corpus "$CORPUS" \
    --exclude print.html --exclude toc.html --exclude 2018-edition --exclude first-edition \
    --exclude second-edition --exclude '*.js' --exclude '*.css' "$@"
