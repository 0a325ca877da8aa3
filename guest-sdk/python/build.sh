#!/usr/bin/env bash
# Builds a Python wtrace guest, a hook or a task, into a component:
#
#   guest-sdk/python/build.sh DIR OUT.wasm
#
# DIR holds app.py, which defines `class WitWorld(wit_world.WitWorld)`, and
# for a task a world.wit whose one world includes
# wtrace:tracing/task-imports@0.1.0 and adds the task's exports. Without
# world.wit the guest is a hook (world wtrace:tracing/hook@0.1.0).
#
# The WIT package comes from this repository's wit/ (copied into a build
# directory under target/, never committed twice); the SDK (wtrace_guest)
# is put on the Python path. componentize-py is $WTRACE_COMPONENTIZE_PY, else
# target/tools/venv-py/bin/componentize-py (scripts/setup-python.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

if [ $# -ne 2 ]; then
    echo "usage: $0 DIR OUT.wasm  (DIR: app.py, plus world.wit for a task)" >&2
    exit 2
fi
app_dir=$1
out=$2
if [ ! -f "$app_dir/app.py" ]; then
    echo "error: $app_dir/app.py not found" >&2
    exit 2
fi

tool=${WTRACE_COMPONENTIZE_PY:-$root/target/tools/venv-py/bin/componentize-py}
if [ ! -x "$tool" ]; then
    echo "error: componentize-py not found at $tool;" \
        "install it with scripts/test.sh (or: source scripts/setup-python.sh && setup_python_guests)" >&2
    exit 1
fi

mkdir -p "$root/target/guest-build"
build=$(mktemp -d "$root/target/guest-build/python.XXXXXX")
trap 'rm -rf "$build"' EXIT

mkdir -p "$build/py"
cp -r "$here/wtrace_guest" "$build/py/"
cp -r "$app_dir"/. "$build/py/"
rm -rf "$build"/py/*.wit "$build"/py/__pycache__ "$build"/py/*/__pycache__

# wit/ as a dependency: its *.wit in deps/wtrace, its own deps beside it.
mkdir -p "$build/wit/deps/wtrace"
cp "$root"/wit/*.wit "$build/wit/deps/wtrace/"
if [ -d "$root/wit/deps" ]; then
    cp -r "$root"/wit/deps/. "$build/wit/deps/"
fi
if compgen -G "$app_dir/*.wit" >/dev/null; then
    # A task (or a hook with a world of its own): the app's world.
    cp "$app_dir"/*.wit "$build/wit/"
else
    # A hook.
    printf 'package wtrace:python-hook;\n\nworld hook {\n  include wtrace:tracing/hook@0.1.0;\n}\n' \
        >"$build/wit/hook.wit"
fi

mkdir -p "$(dirname "$out")"
"$tool" --quiet --wit-path "$build/wit" componentize \
    --python-path "$build/py" --output "$out" app
