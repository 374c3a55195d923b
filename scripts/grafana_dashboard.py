"""Writes deploy/grafana-dashboard.json: the bridge's panels, every series per instance and
worker (``worker`` is "1", "2"... under ``coap.workers``, "supervisor" for the supervisor's
own process, absent for a single process; ``sum without (worker)`` gives a pod's total).

    python scripts/grafana_dashboard.py

``tests/integration/test_pod.py`` checks every expression against what a running bridge
(CoAPs, two workers) exports.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(REPO, "deploy", "grafana-dashboard.json")
SEL = '{instance=~"$instance"}'
BY = "instance, worker"  # every series keeps both: the legends name them
WHO = "{{instance}} {{worker}}"


def rate(metric: str, window: str = "5m", by: str = BY, extra: str = "") -> str:
    return "sum by (%s%s) (rate(%s%s[%s]))" % (by, extra, metric, SEL, window)


def quantile(q: float, metric: str, extra: str = "") -> str:
    return "histogram_quantile(%s, sum by (%s%s, le) (rate(%s_bucket%s[5m])))" % (
        q, BY, extra, metric, SEL)


def gauge(metric: str, extra: str = "") -> str:
    return "sum by (%s%s) (%s%s)" % (BY, extra, metric, SEL)


# (title, description, unit, [(expression, legend)], width)
PANELS: List[Tuple[str, str, str, List[Tuple[str, str]], int]] = [
    ("Uplinks in and delivered", "uplinks per second stored and answered 2.01, acknowledged "
     "by the broker, and refused by the platform", "ops", [
         (rate("coapbridge_uplinks_acknowledged_total", "1m"), WHO + " acknowledged (2.01)"),
         (rate("coapbridge_uplinks_delivered_total", "1m"), WHO + " delivered (PUBACK)"),
         (rate("coapbridge_uplinks_dead_lettered_total", "1m"), WHO + " refused by the platform"),
     ], 12),
    ("Readiness and links", "1 while /readyz says ready (the bridge can accept and store "
     "uplinks), while the MQTT link is up, while the registry answers", "short", [
         (gauge("coapbridge_ready"), WHO + " ready"),
         (gauge("coapbridge_mqtt_connected"), WHO + " MQTT link up"),
         (gauge("coapbridge_registry_reachable"), WHO + " registry reachable"),
     ], 12),
    ("Requests by route", "CoAP requests answered per second, by route", "reqps", [
        (rate("coapbridge_coap_requests_total", extra=", route"), WHO + " {{route}}"),
    ], 12),
    ("Error ratio by route", "share of the route's answers that were 4.xx or 5.xx", "percentunit", [
        ("%s / %s" % (rate("coapbridge_coap_errors_total", extra=", route"),
                      rate("coapbridge_coap_requests_total", extra=", route")),
         WHO + " {{route}}"),
    ], 12),
    ("Answers by code", "CoAP answers per second by response code (4.01 unknown token, 4.29 "
     "rate limited, 5.03 outbox full or busy...)", "reqps", [
         (rate("coapbridge_coap_requests_total", extra=", code"), WHO + " {{code}}"),
     ], 12),
    ("Requests by transport", "CoAP requests answered per second over UDP and over DTLS",
     "reqps", [
         (rate("coapbridge_coap_requests_total", extra=", transport"), WHO + " {{transport}}"),
     ], 12),
    ("Outbox depth", "uplinks waiting for the platform, and publishes waiting for a PUBACK",
     "short", [
         (gauge("coapbridge_outbox_entries"), WHO + " entries"),
         (gauge("coapbridge_inflight_publishes"), WHO + " publishes in flight"),
     ], 12),
    ("Refusals", "requests refused per second, by reason", "reqps", [
        (rate("coapbridge_outbox_refused_full_total"), WHO + " outbox full (5.03)"),
        (rate("coapbridge_rate_limited_total"), WHO + " rate limited (4.29)"),
        (rate("coapbridge_unknown_token_total"), WHO + " unknown token (4.01)"),
        (rate("coapbridge_provisioning_busy_total"), WHO + " provisioning busy (5.03)"),
    ], 12),
    ("CoAP request to answer", "time from a request to its answer", "s", [
        (quantile(0.5, "coapbridge_coap_request_seconds"), WHO + " p50"),
        (quantile(0.99, "coapbridge_coap_request_seconds"), WHO + " p99"),
    ], 8),
    ("Stored to PUBACK", "time from an uplink stored (2.01) to the broker's PUBACK", "s", [
        (quantile(0.5, "coapbridge_uplink_delivery_seconds"), WHO + " p50"),
        (quantile(0.99, "coapbridge_uplink_delivery_seconds"), WHO + " p99"),
    ], 8),
    ("Observers and connected devices", "observe relations, and devices connected on the "
     "gateway sessions", "short", [
         (gauge("coapbridge_observers"), WHO + " observe relations"),
         (gauge("coapbridge_devices_connected"), WHO + " devices on the gateway session"),
     ], 8),
    ("DTLS sessions", "established CoAPs sessions and handshakes in progress", "short", [
        (gauge("coapbridge_dtls_sessions"), WHO + " established"),
        (gauge("coapbridge_dtls_handshakes_in_progress"), WHO + " handshaking"),
    ], 8),
    ("DTLS handshakes by outcome", "handshakes per second: full, resumed, failed, timed out, "
     "by method (psk, x509, none: a token device)", "ops", [
         (rate("coapbridge_dtls_handshakes_total", extra=", outcome, method"),
          WHO + " {{outcome}} {{method}}"),
     ], 8),
    ("DTLS handshake time", "time from a verified ClientHello to the end of the handshake, "
     "by method (the device's round trips and the bridge's work)", "s", [
         (quantile(0.5, "coapbridge_dtls_handshake_seconds", ", method"),
          WHO + " p50 {{method}}"),
         (quantile(0.99, "coapbridge_dtls_handshake_seconds", ", method"),
          WHO + " p99 {{method}}"),
     ], 8),
    ("DTLS refusals", "handshakes refused (dtls.max_sessions, dtls.handshake_rate), cookies "
     "sent, datagrams dropped, per second", "ops", [
         (rate("coapbridge_dtls_refused_full_total"), WHO + " refused: max_sessions"),
         (rate("coapbridge_dtls_refused_rate_total"), WHO + " refused: handshake_rate"),
         (rate("coapbridge_dtls_hello_verify_sent_total"), WHO + " HelloVerifyRequests"),
         (rate("coapbridge_dtls_dropped_total"), WHO + " dropped"),
     ], 12),
    ("Workers", "1 while a worker answers its supervisor, and its restarts in the last hour",
     "short", [
         ('sum by (%s) (coapbridge_worker_up%s)' % (BY, SEL), WHO + " up"),
         ('sum by (%s) (increase(coapbridge_worker_restarts_total%s[1h]))' % (BY, SEL),
          WHO + " restarts (1 h)"),
     ], 12),
    ("Process", "resident memory and CPU of each process", "short", [
        (gauge("process_resident_memory_bytes"), WHO + " memory (bytes)"),
        (rate("process_cpu_seconds_total", "1m"), WHO + " CPU (cores)"),
    ], 12),
    ("Version", "the running coapbridge and Python", "short", [
        (gauge("coapbridge_build_info", ", version, python"),
         WHO + " {{version}} ({{python}})"),
    ], 12),
]


def panel(number: int, x: int, y: int, title: str, description: str, unit: str,
          targets: List[Tuple[str, str]], width: int) -> Dict[str, Any]:
    return {
        "id": number, "type": "timeseries", "title": title, "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": width, "h": 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [{"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for n, (expr, legend) in enumerate(targets)],
    }


def dashboard() -> Dict[str, Any]:
    panels, x, y = [], 0, 0
    for number, (title, description, unit, targets, width) in enumerate(PANELS, 1):
        if x + width > 24:
            x, y = 0, y + 8
        panels.append(panel(number, x, y, title, description, unit, targets, width))
        x += width
    return {
        "title": "coapbridge", "uid": "coapbridge", "schemaVersion": 39, "version": 2,
        "editable": True, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "tags": ["coapbridge", "coap", "mqtt"],
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus",
             "label": "Prometheus"},
            {"name": "instance", "type": "query", "label": "instance", "includeAll": True,
             "multi": True, "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": "label_values(coapbridge_build_info, instance)", "refresh": 2,
             "allValue": ".*", "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": panels,
    }


def main() -> None:
    with open(TARGET, "w", encoding="utf-8") as handle:
        json.dump(dashboard(), handle, indent=2, ensure_ascii=False)
        handle.write("\n")


if __name__ == "__main__":
    main()
