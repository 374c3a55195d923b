"""The deploy files (no Docker engine or cluster runs here): each parses, sets only
environment variables the configuration reads, and agrees with the config's ports; the
Kubernetes manifests validate against the Kubernetes schema and pass Pod Security
"restricted"; the ConfigMap carries every setting. (The dashboard against a running
bridge, and the pod with a read-only root: tests/integration/test_pod.py.)"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
import yaml

from bridge import settings as config_module
from bridge import startup_checks
from bridge.registry_url import driver_available
from bridge.settings import Config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "deploy")
DEFAULTS = Config()
COAP_PORT, METRICS_PORT = DEFAULTS.coap.bind_port, DEFAULTS.metrics.port
COAPS_PORT = DEFAULTS.dtls.bind_port
KUBERNETES_VERSION = "1.31.0"  # a schema kubernetes-validate ships (any >= 1.25 for policy/v1)
# read by the process, not a setting: where Python's tempfile and SQLite write theirs
TMPDIR = "TMPDIR"


def read_names():
    """The environment variables the configuration reads (every setting's names)."""
    return set(config_module.ENV_NAMES) | set(config_module.PROCESS_VARIABLES) | {TMPDIR}


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


def config_map():
    return kubernetes()[("ConfigMap", "coapbridge-config")]["data"]


def pod_env(tmp_path=None, **more):
    """The environment of the StatefulSet's container: the ConfigMap's variables, then its
    own env (a secret's value as "from-a-secret"); with ``tmp_path``, the DTLS Secret's
    files written there and named in place of the mount's."""
    _, bridge = container()
    env = dict(config_map())
    env.update({item["name"]: item.get("value", "from-a-secret") for item in bridge["env"]})
    if tmp_path is not None:
        import dtlscerts
        ca = dtlscerts.ca()
        cert, key = dtlscerts.issue("bridge", ca).write(str(tmp_path), "bridge")
        ca_file = tmp_path / "ca.crt"
        ca_file.write_bytes(ca.pem())
        env.update(DTLS_CERT_FILE=cert, DTLS_KEY_FILE=key, DTLS_CA_FILE=str(ca_file))
    env.update(more)
    return env


def test_every_deploy_file_parses():
    files = [path for path in glob.glob(os.path.join(DEPLOY, "**", "*"), recursive=True)
             if os.path.isfile(path)]
    assert len(files) >= 8
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
    assert "%d:%d/udp" % (COAPS_PORT, COAPS_PORT) in bridge["ports"]
    assert "%d:%d" % (METRICS_PORT, METRICS_PORT) in bridge["ports"]
    assert any(volume.endswith(":" + bridge["environment"]["DATA_DIR"])
               for volume in bridge["volumes"])
    # the image's health check: the reactor answers (readiness is for load balancers)
    assert "/healthz" in " ".join(bridge["healthcheck"]["test"])


def test_compose_shows_the_dtls_settings_and_keeps_mosquitto_off_other_hosts():
    with open(os.path.join(DEPLOY, "docker-compose.yml")) as handle:
        text = handle.read()
    commented = {line.strip()[1:].strip().split(":")[0] for line in text.splitlines()
                 if line.strip().startswith("# DTLS_")}
    assert {"DTLS_ENABLED", "DTLS_CERT_FILE", "DTLS_KEY_FILE", "DTLS_CA_FILE"} <= commented
    assert commented <= read_names(), commented - read_names()
    [compose] = documents("docker-compose.yml")
    broker = compose["services"]["mosquitto"]
    # anonymous mosquitto: published on the host's loopback only, or not at all
    assert all(port.startswith("127.0.0.1:") for port in broker.get("ports", []))


def test_the_statefulset_sets_only_settings_the_config_reads_with_probes_and_a_volume():
    spec, bridge = container()
    names = {env["name"] for env in bridge["env"]}
    assert names <= read_names(), names - read_names()
    # every name as the settings derive it: an alias beside a derived name in the
    # ConfigMap would be two values for one setting
    assert names - {TMPDIR} <= {s.env for s in config_module.SETTINGS.values()}
    assert [source["configMapRef"]["name"] for source in bridge["envFrom"]] == [
        "coapbridge-config"]
    # no NAME_PORT=tcp://... from the namespace's Services next to MQTT_PORT and the others
    assert spec["enableServiceLinks"] is False
    ports = {port["name"]: (port["containerPort"], port["protocol"]) for port in bridge["ports"]}
    assert ports == {"coap": (COAP_PORT, "UDP"), "coaps": (COAPS_PORT, "UDP"),
                     "metrics": (METRICS_PORT, "TCP")}
    assert bridge["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    statefulset = kubernetes()[("StatefulSet", "coapbridge")]
    claims = [claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]]
    mounts = {mount["name"]: mount["mountPath"] for mount in bridge["volumeMounts"]}
    assert mounts["data"] == pod_env()["DATA_DIR"] and "data" in claims
    assert ("Secret", "coapbridge-gateway") in kubernetes()


@pytest.mark.skipif(not driver_available(),
                    reason="psycopg does not run on this interpreter (PyPy)")
def test_every_pod_shares_one_postgresql_registry_with_its_password_in_a_secret():
    _, bridge = container()
    env = {item["name"]: item for item in bridge["env"]}
    config = config_module.load(None, pod_env(REGISTRY_PASSWORD="from-the-secret"))
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
    assert username == "tok-1" and args == "-n --pidfile= coapbridge"


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
        (COAP_PORT, "UDP", "coap"), (DEFAULTS.dtls.bind_port, "UDP", "coaps")]


def test_the_coap_service_is_udp_and_source_affine():
    service = kubernetes()[("Service", "coapbridge")]["spec"]
    assert service["sessionAffinity"] == "ClientIP"
    assert service["externalTrafficPolicy"] == "Local"  # the device's own address
    assert [(p["port"], p["protocol"], p["targetPort"]) for p in service["ports"]] == [
        (COAP_PORT, "UDP", "coap"), (COAPS_PORT, "UDP", "coaps")]


def test_the_configmap_carries_every_setting_and_is_current():
    """Every setting's variable is in the ConfigMap (workers included) but the secrets,
    which the StatefulSet takes from Secrets; the file is what
    scripts/kubernetes_configmap.py writes from the settings' schema."""
    settings = config_module.SETTINGS.values()
    secrets = {s.env for s in settings if s.rule.secret}
    assert set(config_map()) == {s.env for s in settings} - secrets
    assert {"COAP_WORKERS", "HEALTH_READY_REQUIRES_MQTT", "METRICS_IDLE_TIMEOUT"} <= \
        set(config_map())
    _, bridge = container()
    from_secrets = {item["name"] for item in bridge["env"] if "valueFrom" in item}
    assert secrets - from_secrets <= {"MQTT_USERNAME", "MQTT_PASSWORD", "DTLS_KEY_PASSWORD",
                                      "REGISTRY_URL"}
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts",
                                                         "kubernetes_configmap.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_configmap_is_a_valid_configuration_for_a_pod_with_coaps(tmp_path):
    loaded = startup_checks.load(None, pod_env(tmp_path, REGISTRY_URL=""))
    assert (loaded.coap.bind_port, loaded.metrics.port) == (COAP_PORT, METRICS_PORT)
    assert loaded.metrics.bind_address == "0.0.0.0"  # the kubelet's probes reach it
    assert loaded.dtls.enabled and loaded.dtls.bind_port == COAPS_PORT
    assert (loaded.data_dir, loaded.log_format, loaded.coap.workers) == ("/data", "json", 1)
    # the ConfigMap's COAP_WORKERS reaches the bridge (the StatefulSet's did nothing before)
    assert startup_checks.load(None, pod_env(tmp_path, REGISTRY_URL="", COAP_WORKERS="2")) \
        .coap.workers == 2


def test_the_dtls_files_come_from_the_mounted_secret():
    spec, bridge = container()
    defaults = {name: config_map()[name]
                for name in ("DTLS_CERT_FILE", "DTLS_KEY_FILE", "DTLS_CA_FILE")}
    [mount] = [m for m in bridge["volumeMounts"] if m["name"] == "dtls"]
    [volume] = [v for v in spec["volumes"] if v["name"] == "dtls"]
    secret = kubernetes()[("Secret", volume["secret"]["secretName"])]
    assert mount["readOnly"] and secret["type"] == "kubernetes.io/tls"
    for path in defaults.values():
        assert os.path.dirname(path) == mount["mountPath"]
        assert os.path.basename(path) in secret["stringData"]


def pod_specs():
    """(where, pod spec) of every workload in deploy/kubernetes."""
    for (kind, name), doc in kubernetes().items():
        if kind in ("StatefulSet", "Deployment", "DaemonSet", "Job"):
            yield "%s/%s" % (kind, name), doc["spec"]["template"]["spec"]


def test_every_manifest_is_valid_against_the_kubernetes_schema():
    import kubernetes_validate
    docs = kubernetes()
    assert {kind for kind, _ in docs} >= {"StatefulSet", "Service", "ConfigMap", "Secret",
                                          "PodDisruptionBudget"}
    for (kind, name), doc in docs.items():
        # strict: an unknown or misspelt field is an error too
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# Pod Security Standards, "restricted" (kubernetes.io/docs/concepts/security/
# pod-security-standards/): every control of the baseline and restricted levels
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}


def test_every_pod_passes_the_restricted_pod_security_standard():
    specs = list(pod_specs())
    assert specs
    for where, spec in specs:
        pod = spec.get("securityContext", {})
        assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")), where
        assert all(set(volume) - {"name"} <= RESTRICTED_VOLUMES for volume in spec["volumes"])
        assert pod.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost")
        for container_spec in spec["containers"] + spec.get("initContainers", []):
            own = container_spec.get("securityContext", {})

            def setting(key):
                return own.get(key, pod.get(key))
            assert setting("runAsNonRoot") is True, where
            # numeric, and the image's USER 999:999 (a user name fails runAsNonRoot)
            assert setting("runAsUser") == 999 and setting("runAsGroup") == 999, where
            assert own.get("allowPrivilegeEscalation") is False, where
            assert not own.get("privileged"), where
            assert own.get("capabilities", {}).get("drop") == ["ALL"], where
            assert set(own.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}
            assert own.get("seccompProfile", pod.get("seccompProfile"))["type"] in (
                "RuntimeDefault", "Localhost")
            assert own.get("readOnlyRootFilesystem") is True, where
            assert not any(port.get("hostPort") for port in container_spec.get("ports", []))
            assert not own.get("procMount") and not own.get("seLinuxOptions", {}).get("type")
        assert pod.get("fsGroup") == 999, where  # the volume belongs to the bridge's group


def test_what_the_bridge_writes_is_on_volumes_and_the_rest_is_read_only():
    spec, bridge = container()
    env = pod_env()
    mounts = {m["mountPath"]: m for m in bridge["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    claims = {c["metadata"]["name"] for c in kubernetes()[("StatefulSet", "coapbridge")]
              ["spec"]["volumeClaimTemplates"]}
    for variable in ("DATA_DIR", "TMPDIR"):
        mount = mounts[env[variable]]
        assert not mount.get("readOnly"), variable
        assert mount["name"] in claims or "emptyDir" in volumes[mount["name"]], variable
    for path, mount in mounts.items():
        if path not in (env["DATA_DIR"], env["TMPDIR"]):
            assert mount.get("readOnly") is True, path


def test_a_disruption_budget_keeps_all_but_one_pod():
    budget = kubernetes()[("PodDisruptionBudget", "coapbridge")]["spec"]
    statefulset = kubernetes()[("StatefulSet", "coapbridge")]["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"] == statefulset["selector"]
