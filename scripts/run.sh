#!/usr/bin/env bash
# `make run`: make sure an MQTT broker answers, register a demo device, print a
# ready-to-paste CoAP request, then run the bridge in the foreground. A broker this
# script started is stopped when the bridge stops; one that was already there is left.
#
# Environment: CONFIG (default conf/coapbridge.yaml), VENV (default .venv), BROKER_DIR
# (default .tools/mosquitto: the started broker's configuration, log and pid), plus the
# configuration's own variables (MQTT_HOST, MQTT_PORT, COAP_BIND_PORT, DATA_DIR, ...).
set -euo pipefail

cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
CONFIG=${CONFIG:-conf/coapbridge.yaml}
DATA_DIR=${DATA_DIR:-./data}
MQTT_HOST=${MQTT_HOST:-localhost}
MQTT_PORT=${MQTT_PORT:-1883}
COAP_BIND_PORT=${COAP_BIND_PORT:-5683}
# PyPy's young generation (CPython ignores it): at PyPy's default, the size of the CPU's
# cache, its collector takes 40 % of the bridge's CPU (docs/performance.md, PyPy)
export PYPY_GC_NURSERY=${PYPY_GC_NURSERY:-16M}
DEMO_DEVICE=demo-device
TOKEN_FILE="$DATA_DIR/demo-token"
BROKER_DIR=${BROKER_DIR:-.tools/mosquitto}
BROKER_PID=  # set when this script started the broker

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

[ -x "$VENV/bin/twistd" ] || die "$VENV is not set up; run 'make run' instead"
PY="$VENV/bin/python"

port_open() {  # port_open HOST PORT
    "$PY" - "$1" "$2" <<'PY' 2>/dev/null
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5).close()
except OSError:
    sys.exit(1)
PY
}

start_local_broker() {
    local mosquitto
    mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    [ -x "$mosquitto" ] || die "mosquitto is not installed (run: scripts/install.sh system)"
    mkdir -p "$BROKER_DIR"
    cat >"$BROKER_DIR/mosquitto.conf" <<CONF
# Written by scripts/run.sh: a development broker for make run.
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
CONF
    log "starting mosquitto on 127.0.0.1:$MQTT_PORT (log: $BROKER_DIR/mosquitto.log);" \
        "it stops with the bridge"
    # setsid: a Ctrl-C reaches the bridge, not the broker, which takes the bridge's last
    # publishes while it stops; this script stops the broker once the bridge is done
    setsid "$mosquitto" -c "$BROKER_DIR/mosquitto.conf" \
        >"$BROKER_DIR/mosquitto.log" 2>&1 </dev/null &
    BROKER_PID=$!
    echo "$BROKER_PID" >"$BROKER_DIR/mosquitto.pid"
    trap stop_local_broker EXIT
    for _ in $(seq 50); do
        port_open 127.0.0.1 "$MQTT_PORT" && return 0
        sleep 0.1
    done
    cat "$BROKER_DIR/mosquitto.log" >&2 || true
    die "mosquitto did not come up on 127.0.0.1:$MQTT_PORT"
}

stop_local_broker() {
    if [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null; then
        log "stopped the mosquitto this script started (pid $BROKER_PID)"
        rm -f "$BROKER_DIR/mosquitto.pid"
    fi
    BROKER_PID=
}

# 1. A broker. Only a local one is started, and only when nothing listens yet.
case "$MQTT_HOST" in
    localhost|127.0.0.1|::1|ip6-localhost)
        if port_open 127.0.0.1 "$MQTT_PORT"; then
            log "an MQTT broker already listens on 127.0.0.1:$MQTT_PORT"
        else
            start_local_broker
        fi
        ;;
    *)
        log "using the MQTT broker at $MQTT_HOST:$MQTT_PORT"
        ;;
esac

# 2. The demo device, with a token fixed per machine (kept in $TOKEN_FILE).
cli() { "$VENV/bin/coapbridge" --config "$CONFIG" "$@"; }
registered=$(DATA_DIR="$DATA_DIR" cli devices list --show-tokens \
    | awk -v name="$DEMO_DEVICE" '$1 == name { print $2 }')
if [ -n "$registered" ]; then
    token=$registered
    if [ "$(cat "$TOKEN_FILE" 2>/dev/null || true)" != "$token" ]; then
        (umask 077 && mkdir -p "$DATA_DIR" && printf '%s\n' "$token" >"$TOKEN_FILE")
    fi
else
    if [ ! -s "$TOKEN_FILE" ]; then
        (umask 077 && mkdir -p "$DATA_DIR" \
            && "$PY" -c 'from bridge.cli import new_token; print(new_token())' >"$TOKEN_FILE")
    fi
    token=$(head -n 1 "$TOKEN_FILE")
    DATA_DIR="$DATA_DIR" cli devices add "$DEMO_DEVICE" --token "$token" >&2
fi

# 3. Something to paste into another shell.
cat <<MSG

coapbridge listens on udp/$COAP_BIND_PORT; MQTT broker: $MQTT_HOST:$MQTT_PORT.
Send telemetry as $DEMO_DEVICE (expect 2.01 Created) from another shell:

    coap-client-notls -m post -e '{"temperature":21.5}' coap://127.0.0.1:$COAP_BIND_PORT/api/v1/$token/telemetry

Stop the bridge with Ctrl-C$([ -n "$BROKER_PID" ] && printf ' (the broker started for it stops too)').

MSG

# 4. The bridge, in the foreground.
export DATA_DIR
if [ -z "$BROKER_PID" ]; then
    exec "$VENV/bin/twistd" -n --pidfile= coapbridge --config "$CONFIG"
fi
# A broker to stop afterwards: the bridge runs as a background child (which bash starts
# with SIGINT ignored), and this script passes Ctrl-C (SIGINT) and SIGTERM on to it as
# SIGTERM; the bridge drains into the broker, then the EXIT trap stops the broker.
"$VENV/bin/twistd" -n --pidfile= coapbridge --config "$CONFIG" &
bridge=$!
trap 'kill -TERM "$bridge" 2>/dev/null || true' TERM INT
while kill -0 "$bridge" 2>/dev/null; do
    wait "$bridge" || true  # a trap ends the wait early: wait again until it is done
done
status=0
wait "$bridge" || status=$?  # the bridge's own exit status
exit "$status"
