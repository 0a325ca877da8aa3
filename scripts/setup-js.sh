# Set-up for JavaScript guests (sourced by scripts/test.sh, after scripts/setup.sh): componentize-qjs
# (QuickJS) from npm, as guest-sdk/js/package-lock.json pins it, installed with
# `npm ci` into target/tools/js; Node.js and npm from Debian when missing.
# Idempotent, and quick when it is there already.
#
# Exports, for guest-sdk/js/build.mjs and tests/tests/lang_js.rs:
#   WTRACE_JS_TOOLS   the directory whose node_modules holds componentize-qjs
#   WTRACE_NODE       the node executable

setup_js_guests() {
    local root tools
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    tools=$root/target/tools/js
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        apt_install nodejs npm
    fi
    # build.mjs reads directories recursively (Node 18.17 or later).
    if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number);
                  process.exit(a > 18 || (a === 18 && b >= 17) ? 0 : 1)'; then
        echo "error: JavaScript guests need Node.js 18.17 or later; $(command -v node) is $(node --version)" >&2
        return 1
    fi
    if ! cmp -s "$root/guest-sdk/js/package-lock.json" "$tools/package-lock.json" \
        || ! cmp -s "$root/guest-sdk/js/package.json" "$tools/package.json" \
        || [ ! -f "$tools/node_modules/componentize-qjs/index.js" ]; then
        echo "==> installing componentize-qjs into $tools (JavaScript guests)"
        mkdir -p "$tools"
        cp "$root/guest-sdk/js/package.json" "$root/guest-sdk/js/package-lock.json" "$tools/"
        (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error)
    fi
    if ! (cd "$tools" && node -e 'require("componentize-qjs")'); then
        echo "error: componentize-qjs is installed in $tools but does not load" >&2
        return 1
    fi
    export WTRACE_JS_TOOLS="$tools"
    export WTRACE_NODE
    WTRACE_NODE=$(command -v node)
}
