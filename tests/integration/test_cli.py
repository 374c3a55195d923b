"""The operator's commands: `coapbridge` and twistd's handling of bad configuration."""

from __future__ import annotations

import os
import re
import subprocess
import sys


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
SHIPPED = os.path.join(REPO, "conf", "coapbridge.yaml")


def run(args, env=None, cwd=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    done = subprocess.run(args, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=60)
    return done.returncode, done.stdout, done.stderr


def cli(tmp_path, *args, env=None):
    return run([os.path.join(BIN, "coapbridge"), "--config", SHIPPED, *args],
               env={"DATA_DIR": str(tmp_path / "data"), **(env or {})})


def test_devices_add_generates_a_20_character_token_and_list_masks_it(tmp_path):
    rc, out, err = cli(tmp_path, "devices", "add", "Boiler 1", "--type", "boiler")
    assert rc == 0, err
    token = re.search(r"token: (\S+)", out).group(1)
    assert len(token) == 20 and token.isalnum()
    rc, out, _ = cli(tmp_path, "devices", "list")
    assert "Boiler 1" in out and "boiler" in out and token not in out and token[:4] in out
    rc, out, _ = cli(tmp_path, "devices", "list", "--show-tokens")
    assert token in out
    assert os.stat(tmp_path / "data" / "registry.sqlite3").st_mode & 0o777 == 0o600


def test_devices_add_with_token_import_and_remove(tmp_path):
    assert cli(tmp_path, "devices", "add", "A", "--token", "tokA")[0] == 0
    rc, _, err = cli(tmp_path, "devices", "add", "A2", "--token", "tokA")
    assert rc == 1 and "token already belongs" in err
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text("name,token,type\nB,tokB,pump\nC,tokC\n")
    rc, out, err = cli(tmp_path, "devices", "import", str(csv_file))
    assert rc == 0 and "imported 2 devices" in out, err
    rc, out, _ = cli(tmp_path, "devices", "list")
    assert re.search(r"^B\s+\S+\s+pump$", out, re.M) and "tokB" not in out  # token masked
    assert re.search(r"^C\s+\S+\s+default$", out, re.M)
    assert "3 devices" in out
    assert cli(tmp_path, "devices", "remove", "B")[0] == 0
    rc, _, err = cli(tmp_path, "devices", "remove", "B")
    assert rc == 1 and "no device named" in err


def test_devices_add_refuses_control_characters_and_list_escapes_old_names(tmp_path):
    # before: `devices add $'a\x01b'` was accepted, and list printed names raw
    rc, out, err = cli(tmp_path, "devices", "add", "a\x01b")
    assert rc == 1 and "device name must not contain control" in err and "\x01" not in err
    rc, _, err = cli(tmp_path, "devices", "add", "n" * 256)
    assert rc == 1 and "at most 255 characters" in err
    # a name stored by an earlier version, before names were checked
    assert cli(tmp_path, "devices", "add", "placeholder", "--token", "tokOld")[0] == 0
    import sqlite3
    db = sqlite3.connect(str(tmp_path / "data" / "registry.sqlite3"))
    db.execute("UPDATE devices SET name = ? WHERE name = 'placeholder'", ("old\x1b[31mred\n",))
    db.commit()
    db.close()
    rc, out, _ = cli(tmp_path, "devices", "list")
    assert rc == 0 and "old\\x1b[31mred\\n" in out and "\x1b" not in out


def test_check_config_accepts_the_shipped_file_and_reports_env_errors(tmp_path):
    rc, out, _ = cli(tmp_path, "check-config")
    assert rc == 0 and "OK" in out
    rc, out, err = cli(tmp_path, "check-config", env={"COAP_BIND_PORT": "70000",
                                                      "MQTT_PORT": "abc", "MQTT_PROTOCOL": "4"})
    assert rc == 2
    assert "3 problems" in err
    assert "coap.bind_port" in err and "mqtt.port" in err and "mqtt.protocol" in err


def test_twistd_reports_every_config_problem_before_opening_sockets(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("coap:\n  bind_port: 0\n  colour: blue\nmqtt:\n  keepalive: soon\n"
                   "  tls: {enabled: true, ca_file: /nonexistent/ca.pem}\n")
    rc, out, err = run([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "coapbridge",
                        "--config", str(bad)], cwd=str(tmp_path))
    assert rc != 0
    text = out + err
    assert "4 problems" in text
    for fragment in ("coap.colour: unknown key", "coap.bind_port: port 0 is out of range",
                     "mqtt.keepalive: expected an integer", "/nonexistent/ca.pem"):
        assert fragment in text
    assert "CoAP listening" not in text and "Connecting to MQTT" not in text


def test_twistd_reports_yaml_syntax_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("coap: [unclosed\n")
    rc, out, err = run([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "coapbridge",
                        "--config", str(bad)], cwd=str(tmp_path))
    assert rc != 0 and "YAML syntax error" in out + err


def test_twistd_help_lists_options():
    rc, out, err = run([os.path.join(BIN, "twistd"), "coapbridge", "--help"])
    assert rc == 0 and "--config" in out


# -- certificate and PSK devices ----------------------------------------------------------------

def test_devices_add_cert_registers_its_id_and_list_shows_it(tmp_path):
    import x509make
    from bridge.core.auth import certificate_id
    cert, _ = x509make.certificate("meter-9")
    pem = x509make.write_pem(tmp_path / "device.pem", cert)
    sha3 = certificate_id(x509make.der(cert))
    rc, out, err = cli(tmp_path, "devices", "add", "Meter 9", "--cert", pem, "--type", "meter")
    assert rc == 0, err
    assert "certificate: %s (CN meter-9)" % sha3 in out and "token:" not in out  # no token
    rc, out, _ = cli(tmp_path, "devices", "list")
    assert re.search(r"^Meter 9\s+-\s+meter  \[x509\]  x509 %s$" % sha3, out, re.M), out
    rc, _, err = cli(tmp_path, "devices", "add", "Meter 10", "--cert", pem)
    assert rc == 1 and "certificate is already registered, for device 'Meter 9'" in err
    rc, out, _ = cli(tmp_path, "devices", "show", "Meter 9")
    assert rc == 0 and "x509: %s" % sha3 in out and "token: -" in out
    assert x509make.pem(cert).decode().strip() in out  # the PEM, as stored


def test_devices_add_cert_refuses_a_file_that_is_not_a_certificate(tmp_path):
    key = tmp_path / "device.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n")
    for path in (str(key), str(tmp_path / "missing.pem")):
        rc, out, err = cli(tmp_path, "devices", "add", "X", "--cert", path)
        assert rc == 1 and err.count("\n") == 1 and path in err and "Traceback" not in err
    assert "0 devices" in cli(tmp_path, "devices", "list")[1]


def test_devices_add_psk_hides_the_key_unless_asked(tmp_path):
    rc, out, err = cli(tmp_path, "devices", "add", "Psk A", "--psk-key", "s3cret-psk")
    assert rc == 0, err
    token = re.search(r"token: (\S+)", out).group(1)
    assert "PSK identity: %s (the token)" % token in out and "s3cret" not in out
    assert "sends the PSK identity unencrypted" in err  # the token shows in the handshake
    rc, out, err = cli(tmp_path, "devices", "add", "Psk B", "--psk-key-hex", "00a1ff",
                       "--psk-identity", "dev-b")
    assert rc == 0 and "token:" not in out and "unencrypted" not in err, err
    rc, out, _ = cli(tmp_path, "devices", "list")
    assert "s3cret" not in out and "00a1ff" not in out and token not in out
    assert re.search(r"^Psk A\s+\S+\s+default  \[token,psk\]  psk \(the token\)$", out, re.M)
    assert re.search(r"^Psk B\s+-\s+default  \[psk\]  psk dev-b$", out, re.M)
    rc, out, _ = cli(tmp_path, "devices", "list", "--show-tokens")
    assert "psk %s" % token in out and "s3cret" not in out
    rc, out, _ = cli(tmp_path, "devices", "list", "--show-secrets")
    assert "key %s" % b"s3cret-psk".hex() in out and "key 00a1ff" in out and token in out
    rc, out, _ = cli(tmp_path, "devices", "show", "Psk A")
    assert "psk identity: (the token)" in out and "s3cret" not in out and token not in out
    assert "psk key: (hidden: --show-secrets)" in out
    rc, out, _ = cli(tmp_path, "devices", "show", "Psk A", "--show-secrets")
    assert "psk key: %s" % b"s3cret-psk".hex() in out and "token: %s" % token in out
    assert cli(tmp_path, "devices", "show", "Nobody")[0] == 1
    rc, _, err = cli(tmp_path, "devices", "add", "Psk C", "--psk-key", "k",
                     "--psk-identity", "dev-b")
    assert rc == 1 and "PSK identity already belongs to another device" in err
    rc, _, err = cli(tmp_path, "devices", "add", "Psk D", "--psk-key-hex", "xyz")
    assert rc == 1 and "not hex" in err
    rc, _, err = cli(tmp_path, "devices", "add", "Psk E", "--psk-identity", "e")
    assert rc == 1 and "--psk-identity needs --psk-key" in err


def test_devices_import_with_a_header_takes_certificates_and_keys(tmp_path):
    import x509make
    cert, _ = x509make.certificate("cam-1")
    x509make.write_pem(tmp_path / "cam.pem", cert)
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text("name,type,token,cert,psk_identity,psk_key_hex\n"
                        "Cam 1,camera,,cam.pem,,\nPsk 1,,tok1,,,0102\nOld,,tokO\n")
    rc, out, err = cli(tmp_path, "devices", "import", str(csv_file))
    assert rc == 0 and "imported 3 devices" in out, err
    rc, out, _ = cli(tmp_path, "devices", "list")
    assert re.search(r"^Cam 1\s+-\s+camera  \[x509\]", out, re.M)
    assert re.search(r"^Psk 1\s+\S+\s+default  \[token,psk\]", out, re.M)
    assert re.search(r"^Old\s+\S+\s+default$", out, re.M)


def test_a_registry_made_by_an_earlier_version_is_migrated_by_the_first_command(tmp_path):
    import sqlite3
    import x509make
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(str(data / "registry.sqlite3")) as db:  # the schema before #14
        db.execute("CREATE TABLE devices (name TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE, "
                   "type TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, "
                   "pending INTEGER NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO devices (name, token, type) VALUES ('Old', 'tokOld', 'pump')")
    rc, out, err = cli(tmp_path, "devices", "list")
    assert rc == 0 and re.search(r"^Old\s+tokO\S*\s+pump$", out, re.M), err
    cert, _ = x509make.certificate("new-1")
    rc, out, err = cli(tmp_path, "devices", "add", "New", "--cert",
                       x509make.write_pem(tmp_path / "new.pem", cert))
    assert rc == 0, err
    rc, out, _ = cli(tmp_path, "devices", "list", "--show-tokens")
    assert re.search(r"^Old\s+tokOld\s+pump$", out, re.M) and "2 devices" in out


def test_devices_add_and_set_a_devices_own_power_saving(tmp_path):
    rc, out, err = cli(tmp_path, "devices", "add", "Meter 1", "--token", "tokM", "--type",
                       "meter", "--power-mode", "PSM", "--psm-activity-timer", "10s")
    assert rc == 0 and "power saving: PSM, activity timer 10 s" in out, err
    rc, out, err = cli(tmp_path, "devices", "set", "Meter 1", "--power-mode", "E_DRX",
                       "--paging-transmission-window", "2500ms", "--edrx-cycle", "81.92s")
    assert rc == 0, err
    assert "E_DRX, activity timer 10 s, eDRX cycle 81.92 s, paging window 2.5 s" in out
    rc, out, _ = cli(tmp_path, "devices", "show", "Meter 1")
    assert "power saving: E_DRX" in out
    rc, out, err = cli(tmp_path, "devices", "set", "Meter 1", "--power-mode", "profile",
                       "--psm-activity-timer", "profile", "--edrx-cycle", "profile",
                       "--paging-transmission-window", "profile")
    assert rc == 0 and "power saving of its profile" in out, err
    rc, out, _ = cli(tmp_path, "devices", "list")
    assert "power" not in out
    # one clear line for what is wrong, nothing changed
    for args, expected in ((["--psm-activity-timer", "10"], "give a number and a unit"),
                           (["--power-mode", "SLEEPY"], "the power mode is one of PSM, DRX, "
                                                       "E_DRX"),
                           ([], "nothing to set")):
        rc, out, err = cli(tmp_path, "devices", "set", "Meter 1", *args)
        assert rc == 1 and expected in err and "Traceback" not in err, err
    rc, _, err = cli(tmp_path, "devices", "set", "Nobody", "--power-mode", "PSM")
    assert rc == 1 and "no device named 'Nobody'" in err
