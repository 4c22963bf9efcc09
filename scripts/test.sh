#!/usr/bin/env bash
# Runs every test, installing first what the tests need and this machine
# lacks: the wasm32-wasip2 target (rustup), `redis-server` for the cluster
# tests and `chromium` with `chromium-driver` for the browser tests
# (Debian's packages, with apt-get when run as root), and the Python
# tools the conformance and outside-client tests drive (the Autobahn cases
# through `kosoku`, Python's `websockets` client, componentize-py for the
# Python controllers), in a virtual environment under target/, and
# ComponentizeJS for the JavaScript controllers (npm, into target/test-node).
# CI (.ci/run) calls this script; so can you, on a fresh machine.
# Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

# Debian packages the tests drive: redis-server (the cluster tests),
# chromium and its WebDriver (the browser tests).
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "scripts/test.sh: the tests need ${missing[*]}; install them" \
            "(Debian: sudo apt-get install ${missing[*]}) and run this again" >&2
        exit 1
    fi
fi

venv="${SWITCHYARD_TEST_VENV:-$PWD/target/test-venv}"
requirements="tests/requirements.txt"
stamp="$venv/.requirements"
if ! cmp -s "$requirements" "$stamp" 2>/dev/null; then
    if ! python3 -m venv "$venv"; then
        echo "scripts/test.sh: cannot make a Python virtual environment; install Python 3" \
            "with venv (Debian: apt-get install python3-venv) and run this again" >&2
        exit 1
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
fi
# ComponentizeJS for the JavaScript controllers, with npm, under target/.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "scripts/test.sh: the JavaScript controllers' tests need Node.js 20 or later with npm;" \
        "install them (https://nodejs.org, or Debian: apt-get install nodejs npm) and run this again" >&2
    exit 1
fi
node_tools="${SWITCHYARD_JS_TOOLS:-$PWD/target/test-node}"
if ! cmp -s guest-sdk/js/tools/package-lock.json "$node_tools/.installed-lock"; then
    mkdir -p "$node_tools"
    cp guest-sdk/js/tools/package.json guest-sdk/js/tools/package-lock.json "$node_tools/"
    npm ci --silent --no-audit --no-fund --prefix "$node_tools"
    cp guest-sdk/js/tools/package-lock.json "$node_tools/.installed-lock"
fi
export SWITCHYARD_JS_TOOLS="$node_tools"

export SWITCHYARD_TEST_PYTHON="$venv/bin/python"
export SWITCHYARD_TEST_KOSOKU="$venv/bin/kosoku"
# The Python controllers' build tool, for the tests and for `up` in them.
export SWITCHYARD_COMPONENTIZE_PY="$venv/bin/componentize-py"

cargo test --workspace "$@"
