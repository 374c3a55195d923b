#!/usr/bin/env bash
# Installs what coapbridge needs to run and to be tested. Called by the Makefile;
# every step is idempotent and skips work that is already done.
#
#   scripts/install.sh system [--test]  Debian packages (mosquitto, libcoap3-bin, protobuf-compiler; with
#                                       --test also npm, postgresql, chromium and strace when they
#                                       are missing)
#   scripts/install.sh venv             .venv with the project installed editable
#                                       (compat mode) plus the [test] extras
#   scripts/install.sh node-tools       node's coap-cli in .tools/ (test-only client)
#   scripts/install.sh artifact         the wheel and sdist (python -m build) in
#                                       $TOOLS/artifact/dist, the wheel installed into a
#                                       fresh virtualenv $TOOLS/artifact/venv from outside
#                                       the checkout (what tests/artifact runs)
#
# Environment: PYTHON (default python3), VENV (default .venv), TOOLS (default .tools),
# NODE_COAP_CLI_VERSION (default 0.7.1).
set -euo pipefail

cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TOOLS=${TOOLS:-.tools}
NODE_COAP_CLI_VERSION=${NODE_COAP_CLI_VERSION:-0.7.1}
MQTT_PORT_LOCAL=1883

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# mosquitto lives in /usr/sbin, which is not on a normal user's PATH on Debian.
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

port_open() {  # port_open PORT -> 0 when something accepts TCP connections on 127.0.0.1:PORT
    "$PYTHON" - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket()
s.settimeout(0.5)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for: $* (install sudo or run as root)"
    fi
}

# Debian's mosquitto package starts a broker on port 1883 when an init system lets it.
# This project starts its own brokers (make run on demand, the tests on free ports),
# so a broker that apt-get just started is stopped again.
stop_packaged_mosquitto() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        as_root systemctl stop mosquitto.service >/dev/null 2>&1 || true
        as_root systemctl disable mosquitto.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/mosquitto ]; then
        as_root /etc/init.d/mosquitto stop >/dev/null 2>&1 || true
    fi
    local pidfile=/run/mosquitto/mosquitto.pid pid
    if [ -s "$pidfile" ]; then
        pid=$(cat "$pidfile")
        if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mosquitto ]; then
            as_root kill "$pid" || true
        fi
    fi
}

# The PostgreSQL server programs (initdb, pg_ctl): the tests run private clusters with them.
have_postgresql() {
    compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1
}

# Debian's postgresql package creates and starts a cluster on port 5432; the tests start
# their own on free ports, so a server that apt-get just started is stopped again.
stop_packaged_postgresql() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        as_root systemctl stop postgresql.service >/dev/null 2>&1 || true
        as_root systemctl disable postgresql.service >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/postgresql ]; then
        as_root /etc/init.d/postgresql stop >/dev/null 2>&1 || true
    fi
}

cmd_system() {
    local with_test=0
    [ "${1:-}" = "--test" ] && with_test=1
    local packages=()
    have mosquitto || packages+=(mosquitto)
    have coap-client-notls || packages+=(libcoap3-bin)
    # the system protoc: PyPy's (CPython gets grpcio-tools' from pip), and the fallback's tests
    have protoc || packages+=(protobuf-compiler)
    if ! command -v "$PYTHON" >/dev/null 2>&1 && [ "$PYTHON" = pypy3 ]; then
        packages+=(pypy3 pypy3-venv)
    elif ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        packages+=("$([ "$PYTHON" = pypy3 ] && echo pypy3-venv || echo python3-venv)")
    fi
    if [ "$with_test" -eq 1 ] && ! command -v npm >/dev/null 2>&1; then
        packages+=(npm)
    fi
    if [ "$with_test" -eq 1 ] && ! command -v chromium >/dev/null 2>&1; then
        packages+=(chromium)  # headless, the browser of the CoAP-over-WebSocket test
    fi
    # tests/integration/test_pod.py traces every file the bridge opens on a read-only root
    if [ "$with_test" -eq 1 ] && ! command -v strace >/dev/null 2>&1; then
        packages+=(strace)
    fi
    local new_postgresql=0
    if [ "$with_test" -eq 1 ] && ! have_postgresql; then
        packages+=(postgresql)  # the shared registry's tests (tests/pgcluster.py)
        new_postgresql=1
    fi
    if [ "${#packages[@]}" -eq 0 ]; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "missing ${packages[*]} and apt-get is not available; install them by hand"
    local broker_was_up=0
    port_open "$MQTT_PORT_LOCAL" && broker_was_up=1
    log "apt-get install ${packages[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${packages[@]}"
    if [ "$broker_was_up" -eq 0 ]; then
        stop_packaged_mosquitto
    fi
    if [ "$new_postgresql" -eq 1 ]; then
        stop_packaged_postgresql
    fi
}

cmd_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    log "installing coapbridge (editable, compat mode) into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # compat mode: the project root goes on sys.path through a .pth file, which is how
    # twistd finds ./twisted/plugins/coapbridge_plugin.py.
    local constraints=()
    if [ "$("$VENV/bin/python" -c 'import platform; print(platform.python_implementation())')" = PyPy ]; then
        constraints=(-c scripts/pypy-constraints.txt)
    fi
    "$VENV/bin/python" -m pip install -q "${constraints[@]}" -e '.[test]' \
        --config-settings editable_mode=compat
    # Twisted's plugin cache (twisted/plugins/dropin.cache) written now, as the Dockerfile
    # does at build: twistd finds it current and writes nothing where it runs (a read-only
    # root: tests/integration/test_pod.py)
    "$VENV/bin/python" -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
}

cmd_node_tools() {
    local bin="$TOOLS/node_modules/.bin/coap"
    if [ -x "$bin" ]; then
        return 0
    fi
    command -v npm >/dev/null 2>&1 || die "npm is missing (run: scripts/install.sh system --test)"
    log "npm install coap-cli@$NODE_COAP_CLI_VERSION into $TOOLS"
    mkdir -p "$TOOLS"
    npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error \
        "coap-cli@$NODE_COAP_CLI_VERSION" </dev/null
    [ -x "$bin" ] || die "npm finished but $bin is missing"
}

# The artifact a user installs: built from the checkout by $VENV's `build`, installed
# with pip alone (no apt package, no extra) into a new virtualenv. Everything runs from
# an empty directory, so nothing can be imported from the checkout, and the install is
# checked to be the one imported.
cmd_artifact() {
    local root out tmp constraints=()
    root=$(pwd)
    out="$root/$TOOLS/artifact"
    rm -rf "$out"
    mkdir -p "$out"
    log "building the wheel and sdist into $out/dist"
    "$VENV/bin/python" -m build --outdir "$out/dist" . >"$out/build.log" 2>&1 \
        || { cat "$out/build.log" >&2; die "python -m build failed (log above)"; }
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    if [ "$("$PYTHON" -c 'import platform; print(platform.python_implementation())')" = PyPy ]; then
        constraints=(-c "$root/scripts/pypy-constraints.txt")
    fi
    log "installing $(cd "$out/dist" && ls ./*.whl) into a fresh $out/venv"
    (cd "$tmp" && "$PYTHON" -m venv "$out/venv" \
        && "$out/venv/bin/python" -m pip install -q --disable-pip-version-check \
            "${constraints[@]}" "$out"/dist/*.whl) \
        || die "installing the wheel failed"
    (cd "$tmp" && "$out/venv/bin/python" - "$out/venv" <<'PY'
import os, sys
import bridge
venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(bridge.__file__)
if not where.startswith(venv + os.sep):
    sys.exit("install.sh: bridge was imported from %s, not from the fresh install" % where)
PY
    ) || die "the artifact check failed"
}

case "${1:-}" in
    system) shift; cmd_system "$@" ;;
    venv) cmd_venv ;;
    node-tools) cmd_node_tools ;;
    artifact) cmd_artifact ;;
    *) die "usage: $0 system [--test] | venv | node-tools | artifact" ;;
esac
