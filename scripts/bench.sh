#!/usr/bin/env bash
# wtrace's benchmarks, reproducible on a fresh machine: installs the
# wasm32-wasip2 target and Ray (into target/tools/ray-venv, from PyPI), builds
# in release mode and prints every figure with its target. Pass --quick for a
# short run, --no-ray to skip Ray, --only span|tasks|executor|cold|memory|export|scale|nats|actors|chaos
# (chaos, 100 000 normal and hostile tasks while workers are killed, runs only
# when named).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
setup_rust_target
if [[ " $* " != *" --no-ray "* ]]; then
    venv=target/tools/ray-venv
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import ray, opentelemetry.sdk" 2>/dev/null; then
        echo "==> installing Ray into $venv"
        setup_python_venv
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet ray opentelemetry-api opentelemetry-sdk
    fi
    export WTRACE_RAY_PYTHON="$PWD/$venv/bin/python"
fi
setup_rotel
setup_nats_server
cargo build --release -p wtrace -p wtrace-bench
exec target/release/wtrace-bench "$@"
