"""The deploy files (no Docker engine or cluster runs here): each parses, sets only
environment variables the configuration reads, and agrees with the config's ports; the
dashboard asks only for metrics the bridge exports."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from bridge import settings as config_module
from bridge import startup_checks
from bridge.settings import Config
from bridge.glue.bridge import Bridge
from bridge.registry_url import driver_available

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "deploy")
DEFAULTS = Config()
COAP_PORT, METRICS_PORT = DEFAULTS.coap.bind_port, DEFAULTS.metrics.port
ENV_REF = re.compile(r"\$\{([A-Z][A-Z0-9_]*):")


def read_names():
    """The environment variables the configuration reads (every setting's names)."""
    return set(config_module.ENV_NAMES) | set(config_module.PROCESS_VARIABLES)


def documents(name):
    with open(os.path.join(DEPLOY, name)) as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def kubernetes():
    return {(doc["kind"], doc["metadata"]["name"]): doc
            for path in sorted(glob.glob(os.path.join(DEPLOY, "kubernetes", "*.yaml")))
            for doc in documents(os.path.relpath(path, DEPLOY))}


def container():
    [spec] = [doc["spec"]["template"]["spec"] for (kind, _), doc in kubernetes().items()
              if kind == "StatefulSet"]
    [bridge] = [c for c in spec["containers"] if c["name"] == "coapbridge"]
    return spec, bridge


def test_every_deploy_file_parses():
    files = [path for path in glob.glob(os.path.join(DEPLOY, "**", "*"), recursive=True)
             if os.path.isfile(path)]
    assert len(files) >= 7
    for path in files:
        with open(path) as handle:
            if path.endswith((".yml", ".yaml")):
                assert [doc for doc in yaml.safe_load_all(handle) if doc is not None], path
            elif path.endswith(".json"):
                json.load(handle)
            else:
                assert path.endswith(".conf"), path


def test_compose_sets_only_settings_the_config_reads_and_publishes_its_ports():
    [compose] = documents("docker-compose.yml")
    bridge = compose["services"]["coapbridge"]
    assert set(bridge["environment"]) <= read_names(), set(bridge["environment"]) - read_names()
    assert bridge["environment"]["MQTT_HOST"] == "mosquitto" and "mosquitto" in compose["services"]
    assert int(bridge["environment"]["COAP_BIND_PORT"]) == COAP_PORT
    assert int(bridge["environment"]["METRICS_PORT"]) == METRICS_PORT
    assert "%d:%d/udp" % (COAP_PORT, COAP_PORT) in bridge["ports"]
    assert "%d:%d" % (METRICS_PORT, METRICS_PORT) in bridge["ports"]
    assert any(volume.endswith(":" + bridge["environment"]["DATA_DIR"])
               for volume in bridge["volumes"])
    assert "/readyz" in " ".join(bridge["healthcheck"]["test"])


def test_the_statefulset_sets_only_settings_the_config_reads_with_probes_and_a_volume():
    spec, bridge = container()
    names = {env["name"] for env in bridge["env"]}
    assert names <= read_names(), names - read_names()
    # no NAME_PORT=tcp://... from the namespace's Services next to MQTT_PORT and the others
    assert spec["enableServiceLinks"] is False
    ports = {port["name"]: (port["containerPort"], port["protocol"]) for port in bridge["ports"]}
    assert ports == {"coap": (COAP_PORT, "UDP"), "metrics": (METRICS_PORT, "TCP")}
    assert bridge["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    data_dir = [env["value"] for env in bridge["env"] if env["name"] == "DATA_DIR"][0]
    statefulset = kubernetes()[("StatefulSet", "coapbridge")]
    claims = [claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]]
    mounts = {mount["name"]: mount["mountPath"] for mount in bridge["volumeMounts"]}
    assert mounts["data"] == data_dir and "data" in claims
    config_path = [env["value"] for env in bridge["env"] if env["name"] == "COAPBRIDGE_CONFIG"]
    assert bridge["args"][-1].endswith(" --config " + config_path[0])
    assert os.path.dirname(config_path[0]) == mounts["config"]
    assert ("Secret", "coapbridge-gateway") in kubernetes()


@pytest.mark.skipif(not driver_available(),
                    reason="psycopg does not run on this interpreter (PyPy)")
def test_every_pod_shares_one_postgresql_registry_with_its_password_in_a_secret():
    _, bridge = container()
    env = {item["name"]: item for item in bridge["env"]}
    config = startup_checks.load_text(
        kubernetes()[("ConfigMap", "coapbridge-config")]["data"]["coapbridge.yaml"],
        {"REGISTRY_URL": env["REGISTRY_URL"]["value"], "REGISTRY_PASSWORD": "from-the-secret"})
    target = config.registry_target
    assert target.shared and "from-the-secret" in target.conninfo
    assert "from-the-secret" not in target.display
    secret = env["REGISTRY_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert "password" in kubernetes()[("Secret", secret["name"])]["stringData"]


def run_pod_command(tmp_path, hostname, tokens):
    """The StatefulSet's command in /bin/sh, the Secret's volume a directory with ``tokens``
    and ``twistd`` a script that prints its MQTT_USERNAME and arguments."""
    spec, bridge = container()
    [mount] = [m["mountPath"] for m in bridge["volumeMounts"] if m["name"] == "gateway"]
    [volume] = [v for v in spec["volumes"] if v["name"] == "gateway"]
    assert volume["secret"]["secretName"] == "coapbridge-gateway"
    secret = tmp_path / "gateway"
    secret.mkdir()
    for key, token in tokens.items():
        (secret / key).write_text(token)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "twistd").write_text('#!/bin/sh\necho "$MQTT_USERNAME|$*"\n')
    (fake / "twistd").chmod(0o755)
    script = bridge["args"][-1].replace(mount, str(secret))
    env = {"PATH": "%s:/usr/bin:/bin" % fake, "HOSTNAME": hostname}
    return subprocess.run(bridge["command"] + [script], env=env, capture_output=True,
                          text=True, timeout=10)


def test_each_pod_connects_with_the_token_of_its_own_gateway_device(tmp_path):
    """One gateway device per instance (docs/deployment.md): the Secret has a key per pod
    of the StatefulSet, and a pod takes the token under its own name."""
    statefulset = kubernetes()[("StatefulSet", "coapbridge")]
    secret = kubernetes()[("Secret", "coapbridge-gateway")]
    pods = ["coapbridge-%d" % n for n in range(statefulset["spec"]["replicas"])]
    assert sorted(secret["stringData"]) == pods
    result = run_pod_command(tmp_path, "coapbridge-1", {"coapbridge-0": "tok-0",
                                                          "coapbridge-1": "tok-1"})
    assert result.returncode == 0, result.stderr
    username, args = result.stdout.strip().split("|")
    assert username == "tok-1" and args.startswith("-n --pidfile= coapbridge --config ")


def test_a_pod_without_a_token_of_its_own_stops_with_one_line(tmp_path):
    result = run_pod_command(tmp_path, "coapbridge-2", {"coapbridge-0": "tok-0"})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == ("coapbridge: the Secret coapbridge-gateway has no token "
                                     "for pod coapbridge-2")


def test_the_coap_service_is_udp_and_source_affine():
    service = kubernetes()[("Service", "coapbridge")]["spec"]
    assert service["sessionAffinity"] == "ClientIP"
    assert service["externalTrafficPolicy"] == "Local"  # the device's own address
    assert [(p["port"], p["protocol"], p["targetPort"]) for p in service["ports"]] == [
        (COAP_PORT, "UDP", "coap")]


def test_the_configmap_is_a_valid_configuration_with_the_default_ports():
    config_map = kubernetes()[("ConfigMap", "coapbridge-config")]
    text = config_map["data"]["coapbridge.yaml"]
    assert set(ENV_REF.findall(text)) <= read_names()
    loaded = startup_checks.load_text(text, {})
    assert (loaded.coap.bind_port, loaded.metrics.port) == (COAP_PORT, METRICS_PORT)
    assert loaded.metrics.bind_address == "0.0.0.0"  # the kubelet's probes reach it
    _, bridge = container()
    assert os.path.basename(bridge["args"][-1]) in config_map["data"]


def exported_names():
    from twisted.web.test.requesthelper import DummyRequest

    from bridge.edge.metrics import MetricsResource
    bridge = Bridge(Config(), Clock())
    request = DummyRequest([b"metrics"])
    text = MetricsResource(bridge.prometheus.registry).render(request).decode()
    return {sample.name for family in text_string_to_metric_families(text)
            for sample in family.samples}


def test_the_dashboard_asks_only_for_metrics_the_bridge_exports():
    with open(os.path.join(DEPLOY, "grafana-dashboard.json")) as handle:
        dashboard = json.load(handle)
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs
            for name in re.findall(r"\b((?:coapbridge|process)_[a-z_]+)", expr)}
    exported = exported_names()
    assert used and used <= exported, used - exported
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("uplinks", "outbox", "link", "answer", "puback", "observers", "refusals"):
        assert topic in titles, topic
