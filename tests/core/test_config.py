"""Configuration loading and validation (bridge.settings, bridge.startup_checks), always with an explicit env dict."""

import os

import pytest

from bridge.settings import Config, ConfigError
from bridge.startup_checks import load, load_text


def problems_of(text, env=None):
    with pytest.raises(ConfigError) as info:
        load_text(text, {} if env is None else env)
    return info.value.problems


def test_empty_text_gives_defaults():
    config = load_text("", {})
    assert config == Config()
    assert config.coap.bind_address == "0.0.0.0"
    assert config.coap.bind_port == 5683
    assert config.mqtt.host == "localhost"
    assert config.mqtt.port == 1883
    assert config.mqtt.protocol == "5" and config.mqtt.mqtt5 is True
    assert config.mqtt.tls.enabled is False
    assert config.devices.idle_timeout == 600.0
    assert config.registry_path == os.path.join("./data", "registry.sqlite3")


def test_partial_section_keeps_other_defaults():
    config = load_text("mqtt:\n  host: tb.example\n", {})
    assert config.mqtt.host == "tb.example"
    assert config.mqtt.port == 1883
    assert config.coap == Config().coap


def test_built_in_defaults_without_file_match_dataclass_defaults():
    assert load(None, {}) == Config()


def test_shipped_file_without_environment_gives_the_built_in_defaults():
    # Integration tests leave unset what they are not about and so run the built-in
    # defaults: those must be the ones a user gets from conf/coapbridge.yaml.
    shipped = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "coapbridge.yaml")
    assert load(shipped, {}) == Config()


def test_built_in_defaults_read_environment():
    config = load(None, {"MQTT_HOST": "broker", "MQTT_PORT": "8883", "MQTT_PROTOCOL": "3.1.1",
                         "MQTT_TLS": "true"})
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.protocol, config.mqtt.tls.enabled) == (
        "broker", 8883, "3.1.1", True)


def test_outbox_batch_size_comes_from_the_environment_with_the_shipped_file():
    import os
    shipped = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "coapbridge.yaml")
    assert load(shipped, {}).outbox.max_batch == 100
    assert load(shipped, {"OUTBOX_MAX_BATCH": "1"}).outbox.max_batch == 1


def test_worker_count_comes_from_the_environment_and_names_files_and_client_ids():
    from bridge.settings import worker_client_id
    shipped = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "coapbridge.yaml")
    assert load(shipped, {}).coap.workers == 1
    assert load(None, {"COAP_WORKERS": "4"}).coap.workers == 4
    config = load(shipped, {"COAP_WORKERS": "2", "DATA_DIR": "/var/lib/cb",
                            "MQTT_CLIENT_ID": "gw"})
    assert config.coap.workers == 2
    assert [config.worker_outbox_path(n) for n in (0, 1, 2)] == [
        "/var/lib/cb/outbox.sqlite3", "/var/lib/cb/outbox-w1.sqlite3",
        "/var/lib/cb/outbox-w2.sqlite3"]
    assert [worker_client_id(config, "host", n) for n in (0, 1, 2)] == ["gw", "gw-w1", "gw-w2"]
    for bad in ("0", "257"):
        with pytest.raises(ConfigError) as caught:
            load(shipped, {"COAP_WORKERS": bad})
        assert caught.value.problems == ["coap.workers: must be 1 to 256, got %s" % bad]


def test_json_nesting_limit_comes_from_the_environment_with_the_shipped_file():
    shipped = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "coapbridge.yaml")
    assert load(shipped, {}).limits.json_max_depth == 32
    assert load(shipped, {"LIMIT_JSON_MAX_DEPTH": "256"}).limits.json_max_depth == 256


def test_env_substitution_uses_env_value_and_coerces_type():
    config = load_text('mqtt: {host: "${MQTT_HOST:localhost}", port: "${MQTT_PORT:1883}"}',
                       {"MQTT_HOST": "tb.local", "MQTT_PORT": "8883"})
    assert config.mqtt.host == "tb.local"
    assert config.mqtt.port == 8883


def test_env_substitution_falls_back_to_default():
    config = load_text('mqtt: {host: "${MQTT_HOST:fallback}", port: "${MQTT_PORT:1884}"}', {})
    assert config.mqtt.host == "fallback"
    assert config.mqtt.port == 1884


def test_env_substitution_empty_default_and_embedded_references():
    config = load_text('mqtt: {username: "${U:}", client_id: "gw-${SITE:x}-${N:1}"}', {"SITE": "lab"})
    assert config.mqtt.username == ""
    assert config.mqtt.client_id == "gw-lab-1"


def test_env_value_set_to_empty_string_wins_over_default():
    config = load_text('mqtt: {username: "${U:admin}"}', {"U": ""})
    assert config.mqtt.username == ""


def test_env_substitution_for_booleans():
    config = load_text('mqtt: {tls: {verify_hostname: "${V:true}"}}', {"V": "no"})
    assert config.mqtt.tls.verify_hostname is False


def test_unset_variable_without_default_is_an_error():
    problems = problems_of('mqtt: {host: "${MQTT_HOST}"}')
    assert len(problems) == 1
    assert "MQTT_HOST" in problems[0] and "mqtt.host" in problems[0]


def test_every_problem_is_reported_at_once():
    text = "coap:\n  bogus: 1\n  bind_port: 70000\nmqtt:\n  keepalive: soon\n"
    with pytest.raises(ConfigError) as info:
        load_text(text, {}, source="bridge.yaml")
    problems = info.value.problems
    assert len(problems) == 3
    assert any("coap.bogus" in p and "unknown key" in p for p in problems)
    assert any("coap.bind_port" in p and "70000" in p for p in problems)
    assert any("mqtt.keepalive" in p and "integer" in p for p in problems)
    message = str(info.value)
    assert message.startswith("bridge.yaml has 3 problems:")
    assert all(p in message for p in problems)


@pytest.mark.parametrize("text,key", [
    ("mqtt: {port: 0}", "mqtt.port"),
    ("mqtt: {port: 65536}", "mqtt.port"),
    ("coap: {bind_port: -1}", "coap.bind_port"),
    ("mqtt: {puback_timeout: 0}", "mqtt.puback_timeout"),
    ("devices: {idle_timeout: -5}", "devices.idle_timeout"),
    ("mqtt: {port: 1883.5}", "mqtt.port"),
    ("mqtt: {port: true}", "mqtt.port"),
    ("mqtt: {host: [a, b]}", "mqtt.host"),
    ("mqtt: {tls: {enabled: maybe}}", "mqtt.tls.enabled"),
    ("mqtt: {reconnect_min_delay: 10, reconnect_max_delay: 5}", "mqtt.reconnect_max_delay"),
    ("mqtt: {max_packet_size: 300000000}", "mqtt.max_packet_size"),
    ("log_level: verbose", "log_level"),
    ("outbox: {max_batch: 0}", "outbox.max_batch"),
    ("devices: {default_type: ''}", "devices.default_type"),
    ("limits: {json_max_depth: 0}", "limits.json_max_depth"),
    ("limits: {json_max_depth: 257}", "limits.json_max_depth"),
    ("mqtt: 5", "mqtt"),
    ("mqtt: {tls: {enabled: true, cert_file: ''}, bogus: 1}", "mqtt.bogus"),
])
def test_invalid_value_is_reported_by_key(text, key):
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith(key)


def test_top_level_must_be_a_mapping():
    problems = problems_of("- a\n- b\n")
    assert len(problems) == 1
    assert problems[0].startswith("top level: expected a mapping")


@pytest.mark.parametrize("port", [1, 65535])
def test_port_range_bounds_are_accepted(port):
    assert load_text("mqtt: {port: %d}" % port, {}).mqtt.port == port


def test_yaml_syntax_error_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        load_text("mqtt: {host: [unclosed\n", {})
    assert len(info.value.problems) == 1
    assert "YAML syntax error" in info.value.problems[0]
    assert "\n" not in info.value.problems[0]


@pytest.mark.parametrize("text,protocol,mqtt5", [
    ('mqtt: {protocol: "5"}', "5", True),
    ("mqtt: {protocol: 5}", "5", True),
    ("mqtt: {protocol: 3.1.1}", "3.1.1", False),
    ('mqtt: {protocol: "3.1.1"}', "3.1.1", False),
])
def test_mqtt_protocol_accepted_choices(text, protocol, mqtt5):
    config = load_text(text, {})
    assert config.mqtt.protocol == protocol
    assert config.mqtt.mqtt5 is mqtt5


@pytest.mark.parametrize("value", ["4", "3.1", "v5", "5.0", "mqtt5"])
def test_mqtt_protocol_other_values_are_refused(value):
    problems = problems_of('mqtt: {protocol: "%s"}' % value)
    assert len(problems) == 1
    assert problems[0].startswith("mqtt.protocol") and value in problems[0]


def test_tls_enabled_with_missing_ca_file_names_the_path(tmp_path):
    missing = str(tmp_path / "nope" / "ca.pem")
    problems = problems_of('mqtt: {tls: {enabled: true, ca_file: "%s"}}' % missing)
    assert len(problems) == 1
    assert "mqtt.tls.ca_file" in problems[0] and missing in problems[0]


def test_tls_enabled_with_existing_ca_file_is_accepted(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    config = load_text('mqtt: {tls: {enabled: true, ca_file: "%s"}}' % ca, {})
    assert config.mqtt.tls.enabled and config.mqtt.tls.ca_file == str(ca)


def test_tls_files_are_not_checked_when_tls_disabled(tmp_path):
    missing = str(tmp_path / "ca.pem")
    config = load_text('mqtt: {tls: {enabled: false, ca_file: "%s"}}' % missing, {})
    assert config.mqtt.tls.ca_file == missing


def test_tls_cert_without_key_is_refused(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    problems = problems_of('mqtt: {tls: {enabled: true, cert_file: "%s"}}' % cert)
    assert problems == ["mqtt.tls: cert_file and key_file must be given together"]


def test_load_reports_unreadable_file(tmp_path):
    path = str(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError) as info:
        load(path, {})
    assert path in str(info.value)


def test_load_reads_file_with_env(tmp_path):
    path = tmp_path / "bridge.yaml"
    path.write_text('data_dir: "${DATA_DIR:/var/lib/x}"\n')
    config = load(str(path), {"DATA_DIR": str(tmp_path)})
    assert config.registry_path == os.path.join(str(tmp_path), "registry.sqlite3")


@pytest.mark.parametrize("key", ["puback_timeout", "connect_timeout"])
def test_nan_durations_are_refused(key):
    problems = problems_of("mqtt: {%s: .nan}" % key)
    assert any(p.startswith("mqtt." + key) for p in problems)


def test_default_client_id_is_derived_per_host_and_data_directory(tmp_path):
    from bridge.settings import gateway_client_id
    one = load_text('data_dir: "%s"' % (tmp_path / "a"), {})
    two = load_text('data_dir: "%s"' % (tmp_path / "b"), {})
    assert one.mqtt.client_id == "" == Config().mqtt.client_id  # empty: derive one
    first = gateway_client_id(one, "gw1.example.com")
    assert first == gateway_client_id(one, "gw1.example.com")  # the same on every start
    assert first.startswith("coapbridge-gw1-") and len(first) == len("coapbridge-gw1-") + 8
    assert gateway_client_id(two, "gw1.example.com") != first  # another data directory
    assert gateway_client_id(one, "gw2.example.com") != first  # another host
    assert gateway_client_id(one, "gw1.example.org") != first  # only the hash tells these apart
    assert gateway_client_id(one, "my_host!") == gateway_client_id(one, "my_host!")
    assert gateway_client_id(one, "my_host!").startswith("coapbridge-my-host-")


def test_default_client_id_follows_the_absolute_data_directory(tmp_path, monkeypatch):
    from bridge.settings import gateway_client_id
    relative = load_text('data_dir: "./data"', {})
    monkeypatch.chdir(tmp_path)
    here = gateway_client_id(relative, "gw")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert gateway_client_id(relative, "gw") != here
    assert gateway_client_id(load_text('data_dir: "%s"' % (tmp_path / "data"), {}), "gw") == here


def test_an_explicit_client_id_wins():
    from bridge.settings import gateway_client_id
    config = load(None, {"MQTT_CLIENT_ID": "site-7-gateway"})
    assert gateway_client_id(config, "gw1") == "site-7-gateway"


def test_json_max_depth_comes_from_the_environment_and_must_be_positive():
    shipped = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "coapbridge.yaml")
    assert load(shipped, {}).limits.json_max_depth == 32
    assert load(shipped, {"LIMIT_JSON_MAX_DEPTH": "8"}).limits.json_max_depth == 8
    assert any("limits.json_max_depth" in p for p in problems_of("limits: {json_max_depth: 0}"))


def test_empty_ack_delay_at_or_above_the_ack_timeout_is_refused():
    # the empty ACK must reach the client before it retransmits its request
    for delay in ("2", "3.5"):
        problems = problems_of("coap: {ack_timeout: 2, empty_ack_delay: %s}\n" % delay)
        assert any(p.startswith("coap.empty_ack_delay: must be less than coap.ack_timeout")
                   for p in problems), problems
    assert load_text("coap: {ack_timeout: 2, empty_ack_delay: 1.9}\n", {}).coap.empty_ack_delay == 1.9


def test_the_mqtt_puback_timeout_is_still_read_under_its_old_key_and_env_name_with_a_warning():
    from bridge.settings import ConfigDeprecationWarning
    shipped = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "coapbridge.yaml")
    assert load(shipped, {"MQTT_PUBACK_TIMEOUT": "4"}).mqtt.puback_timeout == 4
    with pytest.warns(ConfigDeprecationWarning, match="mqtt.ack_timeout"):
        assert load_text("mqtt: {ack_timeout: 7}", {}).mqtt.puback_timeout == 7
    with pytest.warns(ConfigDeprecationWarning, match="MQTT_ACK_TIMEOUT"):
        assert load(shipped, {"MQTT_ACK_TIMEOUT": "6"}).mqtt.puback_timeout == 6
    with pytest.warns(ConfigDeprecationWarning):  # the new name wins over the old one
        both = load(shipped, {"MQTT_ACK_TIMEOUT": "6", "MQTT_PUBACK_TIMEOUT": "3"})
    assert both.mqtt.puback_timeout == 3


# -- RFC 8323 listeners (reliable:) --------------------------------------------------------

SHIPPED = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "coapbridge.yaml")


def test_reliable_listeners_are_off_by_default_on_their_ports():
    cfg = load(SHIPPED, {}).reliable
    assert [getattr(cfg, n).enabled for n in ("tcp", "tls", "ws", "wss")] == [False] * 4
    assert [getattr(cfg, n).bind_port for n in ("tcp", "tls", "ws", "wss")] == [
        5683, 5684, 8683, 8684]


def test_reliable_listeners_come_from_the_environment():
    cfg = load(SHIPPED, {"COAP_TCP_ENABLED": "true", "COAP_TCP_BIND_ADDRESS": "::",
                         "COAP_TCP_BIND_PORT": "6683", "COAP_WS_ENABLED": "yes",
                         "COAP_WS_BIND_PORT": "9000", "RELIABLE_KEEPALIVE": "30"}).reliable
    assert cfg.tcp.enabled and cfg.tcp.bind_address == "::" and cfg.tcp.bind_port == 6683
    assert cfg.ws.enabled and cfg.ws.bind_port == 9000 and cfg.keepalive == 30.0
    assert not cfg.tls.enabled


def test_tls_listener_without_any_certificate_or_psk_is_refused():
    problems = problems_of("reliable: {wss: {enabled: true}}")
    assert any("without a certificate" in p for p in problems)


def test_tls_files_default_to_the_dtls_ones(tmp_path):
    from bridge.settings.reliable import tls_files
    config = load_text('dtls: {cert_file: "a.pem", key_file: "a.key", ca_file: "ca.pem"}\n'
                       'reliable: {ca_file: "other.pem"}', {})
    files = tls_files(config)
    assert (files.cert_file, files.key_file, files.ca_file) == ("a.pem", "a.key", "other.pem")


def test_reliable_limits_are_checked():
    problems = problems_of("reliable: {max_message_size: 100, keepalive: -1, "
                           "max_connections: 0, tcp: {enabled: true}, ws: {enabled: true, "
                           "bind_port: 5683}}\ncoap: {workers: 2}")
    assert any("max_message_size: must be 1152 to" in p for p in problems)
    assert any("reliable.keepalive: must be 0 to" in p for p in problems)
    assert any("reliable.max_connections: must be 1 to" in p for p in problems)
    assert any("reliable.ws.bind_port: 5683 is reliable.tcp's too" in p for p in problems)
    assert not any("coap.workers" in p for p in problems)  # the workers share the listeners


def test_reliable_listeners_with_workers_are_accepted():
    config = load_text("reliable: {tcp: {enabled: true}, tls: {enabled: true}, psk: true}\n"
                       "coap: {workers: 2}", {})
    assert config.coap.workers == 2 and config.reliable.tcp.enabled and config.reliable.psk
