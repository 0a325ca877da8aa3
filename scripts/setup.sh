# Shared set-up steps for scripts/demo.sh and scripts/test.sh (sourced).

setup_rust_target() {
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
        echo "==> installing the wasm32-wasip2 Rust target"
        rustup target add wasm32-wasip2
    fi
}

# rotel (the Rust OpenTelemetry collector, on PyPI) receives OTLP in the
# tests; its rotel-agent binary needs libpython3.11.
setup_rotel() {
    local venv=target/tools/venv
    if [ ! -x "$venv/bin/rotel" ]; then
        echo "==> installing rotel into $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet rotel
    fi
    if ! ldconfig -p 2>/dev/null | grep -q 'libpython3\.11\.so'; then
        if ! find / -name 'libpython3.11.so.1.0' -path '*lib*' 2>/dev/null | grep -q .; then
            echo "==> installing libpython3.11 (needed by rotel-agent)"
            if command -v sudo >/dev/null && [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
            $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libpython3.11 >/dev/null
        fi
    fi
    export WTRACE_ROTEL="$PWD/$venv/bin/rotel"
}
