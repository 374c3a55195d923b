"""Every setting from the environment, with or without a file; names, aliases, ranges,
unknown variables, origins and masking (bridge.settings: pure, an explicit env dict)."""

from __future__ import annotations

import math

import pytest

from bridge import startup_checks
from bridge.core.formats.registry import INSTALLED
from bridge.settings import SETTINGS, Config, ConfigError, describe, load_text, read_text
from bridge.settings.loader import ENV_NAMES, coerce
from bridge.settings.schema import env_name, number


def problems_of(env, text=""):
    with pytest.raises(ConfigError) as info:
        load_text(text, env)
    return info.value.problems


def value_at(config, path):
    return describe.value_of(config, path)


def changed(s):
    """A valid value other than the default, as the text of a variable."""
    if s.rule.choices:
        return [c for c in s.rule.choices if c != s.default][0] if len(s.rule.choices) > 1 \
            else None
    if s.rule.address:
        return "127.0.0.2"
    if isinstance(s.default, bool):
        return "false" if s.default else "true"
    if isinstance(s.default, (int, float)):
        low = s.rule.low
        candidate = s.rule.high if s.default != s.rule.high else low + (1 if not s.rule.above
                                                                          else 0.5)
        return number(int(candidate) if isinstance(s.default, int) else float(candidate))
    if s.items is not None:
        return None
    return "some-text"


NEEDS = {
    "mqtt.reconnect_min_delay": {"MQTT_RECONNECT_MAX_DELAY": "86400"},
    "ota.chunk_size": {"MQTT_MAX_PACKET_SIZE": "268435455"},
    "provisioning.mode": {"PROVISIONING_PROFILES": '[{"key": "k", "secret": "s", '
                                                   '"device_type": "t"}]'},
    "ota.source": {"OTA_DIRECTORY": "/srv/packages"},
    "reliable.wss.enabled": {"RELIABLE_CERT_FILE": "/etc/coapbridge/bridge.pem"},
}
SCALARS = [s for s in SETTINGS.values() if s.items is None]


def test_every_setting_has_a_derived_name_and_the_rule_is_its_path():
    assert env_name("coap.max_body") == "COAP_MAX_BODY"
    assert env_name("limits.device_rate") == "LIMITS_DEVICE_RATE"
    assert env_name("dtls.x509.cn_regex") == "DTLS_X509_CN_REGEX"
    assert {s.env for s in SETTINGS.values()} >= {"DEVICE_PROFILES", "PROVISIONING_PROFILES",
                                                  "DATA_DIR", "LOG_LEVEL", "LOG_FORMAT"}
    names = [name for s in SETTINGS.values() for name in s.names + s.rule.deprecated]
    assert len(names) == len(set(names))  # no name for two settings


@pytest.mark.parametrize("s", [s for s in SCALARS if changed(s) is not None],
                         ids=lambda s: s.path)
def test_every_setting_is_read_from_each_of_its_names_without_a_file(s):
    text = {"mqtt.max_packet_size": "1048576", "dtls.x509.cn_regex": "^(.*)$",
            "coap.empty_ack_delay": "1.5", "registry.url": "sqlite:///tmp/r.sqlite3"}.get(
        s.path, changed(s))
    env_extra = NEEDS.get(s.path, {})  # what another setting must be for this value
    for name in s.names:
        config = load_text("", dict(env_extra, **{name: text}))
        expected, _ = coerce(text, s.default)
        assert value_at(config, s.path) == expected, name


@pytest.mark.parametrize("s", [s for s in SCALARS if isinstance(s.default, (int, float))
                               and not isinstance(s.default, bool)], ids=lambda s: s.path)
def test_every_number_has_a_range_and_refuses_inf_nan_and_values_beyond_it(s):
    assert s.rule.low is not None and s.rule.high is not None, s.path
    assert math.isfinite(s.rule.high)
    over = s.rule.high * 10 + 1
    outside = [str(int(over)) if isinstance(s.default, int) else repr(float(over)),
               str(int(s.rule.low) - 1)]
    if isinstance(s.default, float):
        outside += ["inf", "nan", "-inf", "1e308"]
        if s.rule.above:
            outside.append(number(float(s.rule.low)))
    for text in outside:
        problems = problems_of({s.env: text})
        assert [p for p in problems if p.startswith(s.path + ":")] and len(problems) == 1, \
            (text, problems)
    range_text = describe.range_text(s.rule)
    assert range_text and range_text in describe.markdown()


def test_the_issue_s_unbounded_values_are_one_clear_line_each():
    assert problems_of({"COAP_MAX_BODY": "10000000000"}) == [
        "coap.max_body: must be 1 to 16777216 bytes (16 MiB; the platform's packet limit is "
        "64 KiB by default), got 10000000000"]
    assert problems_of({"COAP_ACK_TIMEOUT": "inf"}) == [
        "coap.ack_timeout: must be a finite number, more than 0 and at most 60 s, got inf"]
    assert problems_of({"PLATFORM_REQUEST_TIMEOUT": "1e308"}) == [
        "platform.request_timeout: must be more than 0 and at most 3600 s, got 1e+308"]


@pytest.mark.parametrize("value,expected", [
    ("localhost", "coap.bind_address: must be an IP address, not the name localhost: give "
                  "127.0.0.1 (or ::1)"),
    ("127.0.0.1 ", "coap.bind_address: '127.0.0.1 ' has spaces around it: give '127.0.0.1'"),
    ("999.1.1.1", "coap.bind_address: '999.1.1.1' is not an IP address (names are not "
                  "resolved): give an IP address such as 0.0.0.0 (every IPv4 address), :: "
                  "(IPv6 and IPv4) or 127.0.0.1 (this host only)"),
])
def test_a_bind_address_that_is_no_ip_address_is_one_line(value, expected):
    assert problems_of({"COAP_BIND_ADDRESS": value}) == [expected]
    other = problems_of({"METRICS_BIND_ADDRESS": value})
    assert len(other) == 1 and other[0].startswith("metrics.bind_address: ")
    dtls = problems_of({"COAP_DTLS_BIND_ADDRESS": value})
    assert len(dtls) == 1 and dtls[0].startswith("dtls.bind_address: ")


def test_ip_addresses_of_both_families_are_bind_addresses():
    for value in ("0.0.0.0", "::", "127.0.0.1", "::1", "fe80::1%lo"):
        assert load_text("", {"COAP_BIND_ADDRESS": value}).coap.bind_address == value
    assert load_text("", {}).dtls.bind_address == ""  # empty: CoAP's


def test_the_environment_wins_over_the_file_which_wins_over_the_default():
    text = "coap: {bind_port: 5690}\nlimits: {device_rate: 3}\n"
    config = load_text(text, {"COAP_BIND_PORT": "5700"})
    assert config.coap.bind_port == 5700  # environment over file
    assert config.limits.device_rate == 3  # file over default
    assert config.limits.peer_rate == 1000  # default


def test_today_s_documented_names_are_aliases_and_two_names_must_agree():
    assert load_text("", {"LIMIT_DEVICE_RATE": "3"}).limits.device_rate == 3
    assert load_text("", {"LIMITS_DEVICE_RATE": "4"}).limits.device_rate == 4
    assert load_text("", {"DEVICE_IDLE_TIMEOUT": "30"}).devices.idle_timeout == 30
    assert load_text("", {"MQTT_TLS": "true"}).mqtt.tls.enabled
    assert load_text("", {"LIMIT_DEVICE_RATE": "3", "LIMITS_DEVICE_RATE": "3"}) \
        .limits.device_rate == 3
    assert problems_of({"LIMIT_DEVICE_RATE": "3", "LIMITS_DEVICE_RATE": "4"}) == [
        "limits.device_rate: LIMITS_DEVICE_RATE and LIMIT_DEVICE_RATE set it to different "
        "values: give one of them"]


def test_thingsboard_s_dtls_names_are_accepted_and_its_key_store_refused():
    config = load_text("", {"COAP_DTLS_ENABLED": "true", "COAP_DTLS_CREDENTIALS_TYPE": "PEM",
                            "COAP_DTLS_PEM_CERT": "/c.pem", "COAP_DTLS_PEM_KEY": "/k.pem",
                            "COAP_DTLS_PEM_KEY_PASSWORD": "secret"})
    assert (config.dtls.cert_file, config.dtls.key_file, config.dtls.key_password) == (
        "/c.pem", "/k.pem", "secret")
    [line] = problems_of({"COAP_DTLS_CREDENTIALS_TYPE": "KEYSTORE"})
    assert line.startswith("dtls.credentials_type: KEYSTORE (a Java key store) is not "
                           "supported: convert the store to PEM files")
    [line] = problems_of({"COAP_DTLS_KEY_STORE": "/store.jks"})
    assert line.startswith("environment variable COAP_DTLS_KEY_STORE is ThingsBoard's Java "
                           "key store setting")


def test_a_variable_that_looks_like_ours_and_is_none_names_the_nearest():
    assert problems_of({"COAP_BIND_PROT": "5683"}) == [
        "environment variable COAP_BIND_PROT is no setting of coapbridge: did you mean "
        "COAP_BIND_PORT? (`coapbridge config env` lists every one)"]
    [line] = problems_of({"LIMIT_DEVICE_RATES": "1"})
    assert "did you mean LIMIT_DEVICE_RATE?" in line
    [line] = problems_of({"MQTT_ZZZZZZZZZZZZZZ": "1"})
    assert "did you mean" not in line and "MQTT_ZZZZZZZZZZZZZZ" in line


def test_every_section_s_mistyped_variable_is_named():
    # RELIABLE_* (the RFC 8323 listeners' names) once passed silently when mistyped
    [line] = problems_of({"RELIABLE_KEEPALVE": "30"})
    assert "did you mean RELIABLE_KEEPALIVE?" in line
    for name in ENV_NAMES:
        if name != "DATA_DIR":
            assert problems_of({name + "_X": "1"}), name
    # a generic first word of ours does not claim another program's variables
    assert load_text("", {"DATA_HOME": "/srv"}).mqtt.host  # loads, no problem


def test_variables_a_container_commonly_has_or_the_file_refers_to_are_not_problems():
    env = {"PATH": "/usr/bin", "HOME": "/data", "HOSTNAME": "coapbridge-0", "LANG": "C.UTF-8",
           "PYTHONUNBUFFERED": "1", "PIP_NO_CACHE_DIR": "1", "GPG_KEY": "x",
           "PYTHON_VERSION": "3.11.9", "TERM": "xterm", "KUBERNETES_SERVICE_HOST": "10.0.0.1",
           "KUBERNETES_PORT": "tcp://10.0.0.1:443",
           # the Services of our own deploy/kubernetes files, as Kubernetes announces them
           "COAPBRIDGE_SERVICE_HOST": "10.0.0.7", "COAPBRIDGE_SERVICE_PORT": "5683",
           "COAPBRIDGE_SERVICE_PORT_COAP": "5683", "COAPBRIDGE_PORT": "udp://10.0.0.7:5683",
           "COAPBRIDGE_PORT_5683_UDP": "udp://10.0.0.7:5683",
           "COAPBRIDGE_PORT_5683_UDP_PROTO": "udp", "COAPBRIDGE_PORT_5683_UDP_PORT": "5683",
           "COAPBRIDGE_PORT_5683_UDP_ADDR": "10.0.0.7", "COAP_PORT": "udp://10.0.0.9:5683",
           "COAPBRIDGE_CONFIG": "/etc/coapbridge/coapbridge.yaml", "COAPBRIDGE_WORKER": "1",
           "MQTT_GATEWAY_TOKEN": "abc"}
    config = load_text('mqtt: {username: "${MQTT_GATEWAY_TOKEN}"}', env)
    assert config.mqtt.username == "abc"


def test_a_service_link_that_takes_a_setting_s_name_says_so():
    [line] = problems_of({"MQTT_PORT": "tcp://10.0.0.5:1883"})
    assert line.startswith("mqtt.port: expected an integer, got 'tcp://10.0.0.5:1883' "
                           "(MQTT_PORT looks like the address Kubernetes sets")
    assert "enableServiceLinks: false" in line


def test_lists_and_mappings_take_yaml_or_json_text_in_one_variable():
    config = load_text("", {
        "DEVICE_PROFILES": '{"sensor": {"transportPayloadType": "PROTOBUF", '
                           '"deviceTelemetryProtoSchemaFile": "/etc/t.proto"}}',
        "PROVISIONING_PROFILES": "- {key: k1, secret: s1, device_type: meter}\n",
        "PROVISIONING_MODE": "local"})
    assert INSTALLED.name_of(config.device_profiles["sensor"]) == "protobuf"
    # a format's keys as given: its format types them at start
    assert config.device_profiles["sensor"].format_keys == {
        "deviceTelemetryProtoSchemaFile": "/etc/t.proto"}
    assert config.provisioning.profiles[0].secret == "s1"
    # the payload formats check the names, at start (the settings only type them)
    with pytest.raises(ConfigError) as info:
        startup_checks.load_text("", {"DEVICE_PROFILES": '{"sensor": {"transportPayloadType": '
                                      '"CBOR"}}'})
    assert info.value.problems == ["device_profiles.sensor.transportPayloadType: must be JSON "
                                   "or PROTOBUF, got 'CBOR'"]
    [line] = problems_of({"DEVICE_PROFILES": '{"sensor": [unclosed'})
    assert line.startswith("device_profiles: DEVICE_PROFILES is not YAML or JSON: ")


def test_show_names_where_each_value_came_from_and_masks_secrets():
    text = "mqtt:\n  host: tb.example\n  password: hunter2\nregistry:\n" \
           "  url: postgresql://coap:pgsecret@db/fleet\n"
    loaded = read_text(text, {"MQTT_USERNAME": "gatewaytoken123", "COAP_BIND_PORT": "5700",
                              "COAP_DTLS_PEM_KEY_PASSWORD": "keysecret",
                              "PROVISIONING_PROFILES": '[{"key": "k", "secret": "provsecret",'
                                                       ' "device_type": "t"}]'}, "bridge.yaml")
    lines = {line.split()[0]: line for line in describe.show(loaded)}
    assert lines["mqtt.host"].endswith('"tb.example"  (file bridge.yaml:2)')
    assert lines["coap.bind_port"].endswith("5700  (variable COAP_BIND_PORT)")
    assert lines["coap.workers"].endswith("1  (default)")
    assert lines["mqtt.username"].endswith('"gate***"  (variable MQTT_USERNAME)')
    assert '"***"' in lines["mqtt.password"] and '"***"' in lines["dtls.key_password"]
    assert "postgresql://coap:***@db/fleet" in lines["registry.url"]
    everything = "\n".join(lines.values())
    for secret in ("hunter2", "pgsecret", "keysecret", "provsecret", "gatewaytoken123"):
        assert secret not in everything
    assert "variable PORT_FOR_COAP (file x.yaml:1)" in describe.show(read_text(
        'coap: {bind_port: "${PORT_FOR_COAP:1}"}', {"PORT_FOR_COAP": "5"}, "x.yaml"))[1]


def test_env_lists_every_variable_with_its_setting():
    lines = describe.env_lines()
    text = "\n".join(lines)
    for s in SETTINGS.values():
        for name in s.names + s.rule.deprecated:
            assert any(line.split()[:2] == [name, s.path] for line in lines), name
    assert "COAPBRIDGE_CONFIG" in text and "COAPBRIDGE_WORKER" in text


def test_the_defaults_are_the_dataclasses():
    assert load_text("", {}) == Config()
