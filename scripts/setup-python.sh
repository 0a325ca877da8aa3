# Set-up for Python guests (sourced by scripts/test.sh, after scripts/setup.sh): componentize-py from
# PyPI, at the version guest-sdk/python/requirements.txt pins, in the venv
# target/tools/venv-py. Idempotent, and quick when it is there already.
#
# Exports, for guest-sdk/python/build.sh and tests/tests/lang_python.rs:
#   WTRACE_COMPONENTIZE_PY   the componentize-py executable

setup_python_guests() {
    local root venv requirements tool want
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    venv=$root/target/tools/venv-py
    requirements=$root/guest-sdk/python/requirements.txt
    tool=$venv/bin/componentize-py
    want=$(sed -n 's/^componentize-py==//p' "$requirements")
    if [ "$("$tool" --version 2>/dev/null)" != "componentize-py $want" ]; then
        echo "==> installing componentize-py $want into $venv (Python guests)"
        setup_python_venv
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
        if [ "$("$tool" --version 2>/dev/null)" != "componentize-py $want" ]; then
            echo "error: pip installed componentize-py, but $tool does not run as version $want" >&2
            return 1
        fi
    fi
    export WTRACE_COMPONENTIZE_PY="$tool"
}
