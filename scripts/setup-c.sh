# Set-up for C guests (sourced by scripts/test.sh, after scripts/setup.sh): Debian's clang-19 and
# wasi-libc, and the workspace's wtrace-c-tool (C bindings + componentize).
# Idempotent, and quick when everything is there already.
#
# Exports, for tests/tests/lang_c.rs:
#   WTRACE_CLANG   the C compiler (clang-19)
#   WTRACE_C_TOOL  the wtrace-c-tool binary

# The Debian packages of the C toolchain for wasm32-wasi.
WTRACE_C_APT_PACKAGES=(clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc)

setup_c_guests() {
    local missing=() pkg
    for pkg in "${WTRACE_C_APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
    if ! command -v clang-19 >/dev/null; then
        echo "error: clang-19 is not on PATH after installing it" >&2
        return 1
    fi

    # A no-op for cargo (well under a second) once it is built.
    cargo build --release --quiet -p wtrace-c-tool
    local target_dir=${CARGO_TARGET_DIR:-target}
    case $target_dir in /*) ;; *) target_dir=$PWD/$target_dir ;; esac
    local tool=$target_dir/release/wtrace-c-tool
    if [ ! -x "$tool" ]; then
        echo "error: cargo built wtrace-c-tool, but $tool is missing" >&2
        return 1
    fi

    export WTRACE_CLANG
    WTRACE_CLANG=$(command -v clang-19)
    export WTRACE_C_TOOL="$tool"
}
