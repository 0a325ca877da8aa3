#!/usr/bin/env bash
# The seed example end to end on a fresh machine: builds wtrace and the
# example components, runs the traced task with the default hook, and shows
# the trace it wrote to /tmp/spans.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
setup_rust_target

echo "==> building wtrace and the example components"
cargo build --release -p wtrace
cargo build --profile guest --target wasm32-wasip2 --target-dir target/wasm-guests -p hello -p otlp-hook -p console-hook
hello=target/wasm-guests/wasm32-wasip2/guest/hello.wasm
wtrace=target/release/wtrace

rm -rf /tmp/spans
echo "==> wtrace run --tracing-startup-hook=default hello.wasm 'my-function()' 'my-func()'"
"$wtrace" run --tracing-startup-hook=default "$hello" 'my-function()' 'my-func()'
echo "==> span files"
ls -l /tmp/spans
echo "==> wtrace spans /tmp/spans"
"$wtrace" spans /tmp/spans
