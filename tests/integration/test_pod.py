"""The bridge as deploy/kubernetes runs it: the ConfigMap's variables and the StatefulSet's
env (CoAPs on, COAP_WORKERS=2, no configuration file), with every capability dropped and no
new privileges, on a read-only root file system with only DATA_DIR and TMPDIR writable (a
mount namespace: / remounted read-only, the two bind-mounted as volumes are), every file
operation of every process traced (strace -f), beside a real mosquitto.

Its user stays uid 0 (without any capability, so it cannot override a file's permissions,
mount or bind a privileged port): the test virtualenv's interpreter lives under /root here,
which uid 999 cannot reach; the user and group 999 are the manifests' check
(tests/edge/test_deploy.py), and the read-only root holds for any user.

It shows that the bridge writes nothing outside DATA_DIR and TMPDIR (Twisted's plugin
cache included: generated at install, as scripts/install.sh and the Dockerfile do, so the
scan finds it current and writes nothing), and the Grafana dashboard asks only for series
this running bridge exports, with the labels it gives them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import coapraw as raw
import dtlscerts
from bridge.registry import Registry
from conftest import BIN, free_port, free_ports, probe, wait_until

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "deploy")
OPENSSL = shutil.which("coap-client-openssl")
PSK = ("pod-psk", "pod psk secret")
WRITES = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")
# what changes a file system, beside an open for writing
CHANGES = ("mkdir", "mkdirat", "unlink", "unlinkat", "rmdir", "rename", "renameat",
           "renameat2", "link", "linkat", "symlink", "symlinkat", "truncate", "chmod",
           "fchmodat", "chown", "lchown", "fchownat", "utime", "utimes", "utimensat", "mknod",
           "mknodat")
# not files: the process's own devices and pseudo files
HARMLESS = ("/dev/null", "/dev/tty", "/dev/pts/", "/proc/", "/sys/")


def manifests():
    docs = {}
    for name in sorted(os.listdir(os.path.join(DEPLOY, "kubernetes"))):
        with open(os.path.join(DEPLOY, "kubernetes", name)) as handle:
            for doc in yaml.safe_load_all(handle):
                if doc:
                    docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def pod_environment(root, broker_port):
    """The ConfigMap's variables, then the StatefulSet's env, then what this machine needs
    instead of the cluster's (ports, the broker, SQLite for the registry, the files of
    the DTLS Secret in the place of its mount)."""
    docs = manifests()
    env = dict(docs[("ConfigMap", "coapbridge-config")]["data"])
    [container] = docs[("StatefulSet", "coapbridge")]["spec"]["template"]["spec"]["containers"]
    env.update({item["name"]: item["value"] for item in container["env"] if "value" in item})
    dtls_mount = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "dtls"][0]
    for name in ("DTLS_CERT_FILE", "DTLS_KEY_FILE", "DTLS_CA_FILE"):
        env[name] = env[name].replace(dtls_mount, os.path.join(root, "dtls"))
    ports = {"COAP_BIND_PORT": free_ports(), "DTLS_BIND_PORT": free_ports(),
             "METRICS_PORT": free_port()}
    env.update({name: str(port) for name, port in ports.items()})
    env.update(COAP_BIND_ADDRESS="127.0.0.1", METRICS_BIND_ADDRESS="127.0.0.1",
               MQTT_HOST="127.0.0.1", MQTT_PORT=str(broker_port), REGISTRY_URL="",
               DATA_DIR=os.path.join(root, "data"), TMPDIR=os.path.join(root, "tmp"),
               COAP_WORKERS="2", MQTT_USERNAME="pod-gateway-token", HOSTNAME="coapbridge-0")
    # the image's own environment (Dockerfile ENV) and a plain PATH
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1", HOME=env["DATA_DIR"],
               PATH="%s:/usr/local/bin:/usr/bin:/bin" % BIN, LANG="C.UTF-8")
    return env


def can_isolate():
    """Whether this process may make a mount namespace with a read-only root (root, or
    CAP_SYS_ADMIN), and strace and setpriv are installed."""
    missing = [tool for tool in ("unshare", "strace", "setpriv") if not shutil.which(tool)]
    if missing:
        return "missing %s (scripts/install.sh system --test installs strace; util-linux " \
               "has the others)" % ", ".join(missing)
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           "mount -o remount,bind,ro / && ! touch /.ro-probe 2>/dev/null"],
                          capture_output=True, text=True)
    return None if done.returncode == 0 else "no mount namespace here (%s)" % done.stderr.strip()


@pytest.fixture(scope="module")
def pod(broker):
    why = can_isolate()
    if why:
        pytest.skip("the read-only root needs a mount namespace: %s" % why)
    # the package as installed: its plugin cache generated (scripts/install.sh, Dockerfile)
    subprocess.run([sys.executable, "-c", "from twisted.plugin import IPlugin, getPlugins; "
                    "list(getPlugins(IPlugin))"], check=True, timeout=120)
    root = tempfile.mkdtemp(prefix="coapbridge-pod-")
    env = pod_environment(root, broker.port)
    for name in ("data", "tmp", "dtls", "trace"):
        os.mkdir(os.path.join(root, name))
    pki = dtlscerts.ca()
    cert, key = dtlscerts.issue("bridge", pki).write(os.path.join(root, "dtls"), "bridge")
    os.rename(cert, env["DTLS_CERT_FILE"])
    os.rename(key, env["DTLS_KEY_FILE"])
    with open(env["DTLS_CA_FILE"], "wb") as handle:
        handle.write(pki.pem())
    registry = Registry(os.path.join(env["DATA_DIR"], "registry.sqlite3"))
    registry.add("Pod Dev", "tokPod", "default")
    registry.add("Pod Psk Dev", None, "default", psk_identity=PSK[0], psk_key=PSK[1].encode())
    registry.close()
    trace = os.path.join(root, "trace", "files")
    mounts = " && ".join("mount --bind %s %s" % (path, path) for path in (
        env["DATA_DIR"], env["TMPDIR"], os.path.dirname(trace)))
    script = ('%s && mount -o remount,bind,ro / && exec strace -f -qq -e trace=%%file '
              '-o %s setpriv --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"'
              % (mounts, trace))
    log_path = os.path.join(root, "pod.log")
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
         os.path.join(BIN, "twistd"), "-n", "--pidfile=", "coapbridge"],
        stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env, cwd=env["DATA_DIR"])
    port = int(env["METRICS_PORT"])
    try:
        # ready, and nothing degraded: both workers serve, both reach the broker
        wait_until(lambda: probe(port, "/readyz") == (200, "ready\n") or
                   proc.poll() is not None, 120, "the pod ready")
        assert proc.poll() is None, open(log_path).read()
        yield {"env": env, "root": root, "proc": proc, "log": log_path, "trace": trace,
               "metrics": port}
    finally:
        try:
            stop(proc)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def traffic(pod):
    """An uplink over CoAP, one over CoAPs with a PSK, and a request that is refused."""
    env = pod["env"]
    client = raw.Client("127.0.0.1", int(env["COAP_BIND_PORT"]))
    assert client.exchange(raw.request(raw.POST, "/api/v1/tokPod/telemetry", b'{"pod": 1}',
                                       mid=1, token=b"p1")).code_str == "2.01"
    assert client.exchange(raw.request(raw.POST, "/api/v1/nobody/telemetry", b'{"pod": 1}',
                                       mid=2, token=b"p2")).code_str == "4.01"
    client.close()
    assert OPENSSL, "libcoap3-bin's coap-client-openssl is missing (make test installs it)"
    done = subprocess.run([OPENSSL, "-v", "6", "-m", "post", "-e", '{"psk": 1}', "-u", PSK[0],
                           "-k", PSK[1], "coaps://127.0.0.1:%s/api/v1/telemetry"
                           % env["DTLS_BIND_PORT"]], capture_output=True, timeout=30)
    out = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert re.findall(r"t:(?:ACK|CON|NON) c:(\d\.\d\d)", out)[-1:] == ["2.01"], out


def scrape(pod):
    """{series name: [its samples' labels]} of the pod's metrics port."""
    status, text = probe(pod["metrics"], "/metrics")
    assert status == 200, text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample.labels)
    return found


def exported(pod):
    """{series name: the names of its labels}."""
    return {name: set().union(*labels) for name, labels in scrape(pod).items()}


def test_the_pod_serves_coap_and_coaps_with_two_workers(pod):
    traffic(pod)
    series = scrape(pod)
    assert {labels["worker"] for labels in series["process_resident_memory_bytes"]} == {
        "1", "2", "supervisor"}
    transports = {labels["transport"] for labels in series["coapbridge_coap_requests_total"]}
    assert transports == {"udp", "dtls"}
    [build] = {(labels["version"], labels["worker"]) for labels in
               series["coapbridge_build_info"] if labels["worker"] == "1"}
    assert build[0]
    status, body = probe(pod["metrics"], "/readyz")
    assert (status, body) == (200, "ready\n")


def test_the_dashboard_asks_only_for_what_the_running_pod_exports(pod):
    """Every metric an expression of deploy/grafana-dashboard.json names is a series the pod
    exports (scraped, with CoAPs on and two workers), every label it groups or selects by
    is one of that series' labels (Prometheus adds instance), and every legend names the
    worker."""
    traffic(pod)
    series = wait_until(lambda: (lambda found: found if all(
        name in found for name in ("coapbridge_coap_requests_total",
                                   "coapbridge_dtls_handshake_seconds_bucket")) else None)(
        exported(pod)), 30, "the labelled series")
    with open(os.path.join(DEPLOY, "grafana-dashboard.json")) as handle:
        dashboard = json.load(handle)
    targets = [(panel["title"], target) for panel in dashboard["panels"]
               for target in panel.get("targets", [])]
    assert len(targets) >= 20
    for title, target in targets:
        expr = target["expr"]
        names = set(re.findall(r"\b((?:coapbridge|process)_[a-z_]+)\b", expr))
        assert names, (title, expr)
        assert names <= set(series), (title, names - set(series))
        labels = set()
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            labels.update(part.strip() for part in group.split(",") if part.strip())
        labels.update(re.findall(r"([a-z_]+)\s*(?:=~|!=|!~|=)\s*\"", expr))
        known = set().union(*(series[name] for name in names)) | {"instance"}
        assert labels <= known, (title, labels - known)
        assert "{{worker}}" in target["legendFormat"], (title, target["legendFormat"])
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("uplinks", "outbox", "readiness", "answer", "puback", "observers",
                  "refusals", "route", "error ratio", "dtls sessions", "dtls handshakes",
                  "handshake time", "workers"):
        assert topic in titles, topic


def supervisor_pid(proc):
    """The bridge's supervisor: strace's child (setpriv exec'd twistd in it)."""
    with open("/proc/%d/task/%d/children" % (proc.pid, proc.pid)) as handle:
        [pid] = handle.read().split()
    return int(pid)


def stop(proc):
    """SIGTERM to the supervisor as the kubelet sends it (strace, given one, would detach
    and leave it running); strace ends when every process it traces has."""
    if proc.poll() is None:
        os.kill(supervisor_pid(proc), signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise


def stopped(pod):
    stop(pod["proc"])
    with open(pod["trace"]) as handle:
        return handle.read().splitlines()


def test_the_pod_writes_nothing_outside_its_volumes(pod):
    """Run last in this module: it stops the pod, so that the trace holds everything the
    processes did, their ends included."""
    traffic(pod)
    lines = stopped(pod)
    env = pod["env"]
    allowed = (env["DATA_DIR"] + "/", env["TMPDIR"] + "/")
    calls = re.compile(r"^(\d+) +(\w+)\((.*)\) += (-?\d+|\?)(?: (\w+))?")
    unfinished = re.compile(r"^(\d+) +(\w+)\((.*) <unfinished \.\.\.>$")
    resumed = re.compile(r"^(\d+) +<\.\.\. (\w+) resumed>(.*)\) += (-?\d+|\?)(?: (\w+))?")
    writes, refused, executed, inside = [], [], set(), []
    pending = {}  # pid -> (call, its arguments so far): strace -f interleaves processes
    for line in lines:
        match = unfinished.match(line)
        if match is not None:
            pending[match.group(1)] = (match.group(2), match.group(3))
            continue
        match = resumed.match(line)
        if match is not None and match.group(1) in pending:
            name, args = pending.pop(match.group(1))
            args += match.group(3)
            result, error = match.group(4), match.group(5)
        else:
            match = calls.match(line)
            if match is None:
                continue
            _, name, args, result, error = match.groups()
        paths = re.findall(r'"((?:[^"\\]|\\.)*)"', args)
        if not paths:
            continue
        path = os.path.normpath(os.path.join(env["DATA_DIR"], paths[0]))
        if name == "execve" and result == "0":
            executed.add(os.path.basename(path))
        changes = name in CHANGES or (name in ("open", "openat", "openat2", "creat") and
                                      (name == "creat" or WRITES.search(args)))
        if not changes:
            continue
        if error in ("EROFS", "EACCES", "EPERM"):
            refused.append(line)
        elif path.startswith(HARMLESS):
            continue
        elif (path + "/").startswith(allowed) or path in (env["DATA_DIR"], env["TMPDIR"]):
            inside.append(path)
        elif result != "-1":
            writes.append(line)
    assert "twistd" in executed  # the trace followed the bridge, not only its wrapper
    assert writes == [] and refused == [], "\n".join(writes + refused)
    # the trace saw what the processes did write: the outboxes of both workers
    assert any(path.endswith("outbox-w1.sqlite3-wal") for path in inside)
    assert any(path.endswith("outbox-w2.sqlite3-wal") for path in inside)
    log = open(pod["log"]).read()
    assert "Unable to write to plugin cache" not in log and "Traceback" not in log
    # and the pod really wrote where it may: its outboxes, one per worker, and the registry
    assert {"outbox-w1.sqlite3", "outbox-w2.sqlite3", "registry.sqlite3"} <= set(
        os.listdir(env["DATA_DIR"]))
