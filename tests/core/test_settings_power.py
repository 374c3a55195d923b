"""Power saving in the settings: coap.psm_activity_timer, paging_transmission_window,
transport_log, and a device profile's clientSettings (an item inside the item, its keys
null as an exported ThingsBoard profile has them)."""

import pytest

from bridge.core.formats.registry import INSTALLED
from bridge.settings import ConfigError, load_text


def profiles(text, env=None):
    return load_text("device_profiles: %s" % text, env or {}).device_profiles


def test_client_settings_take_thingsboards_keys_and_nulls():
    client = profiles("{meter: {clientSettings: {powerMode: PSM, psmActivityTimer: 30000, "
                      "edrxCycle: null, pagingTransmissionWindow: null}}}")["meter"].clientSettings
    assert (client.powerMode, client.psmActivityTimer, client.edrxCycle,
            client.pagingTransmissionWindow) == ("PSM", 30000, 0, 0)
    assert profiles("{meter: {clientSettings: null}}")["meter"].clientSettings.powerMode == ""
    assert profiles("{meter: {}}")["meter"].clientSettings.powerMode == ""


def test_client_settings_from_the_environment_as_yaml():
    text = '{"meter": {"clientSettings": {"powerMode": "E_DRX", "pagingTransmissionWindow": 5000}}}'
    client = load_text("", {"DEVICE_PROFILES": text}).device_profiles["meter"].clientSettings
    assert (client.powerMode, client.pagingTransmissionWindow) == ("E_DRX", 5000)


def test_bad_client_settings_are_each_one_line():
    with pytest.raises(ConfigError) as info:
        profiles("{meter: {clientSettings: {powerMode: SLEEPY, psmActivityTimer: -1, "
                 "edrxCycle: soon, pause: 3}}}")
    assert info.value.problems == [
        "device_profiles.meter.clientSettings.pause: unknown key (known: edrxCycle, "
        "pagingTransmissionWindow, powerMode, psmActivityTimer)",
        "device_profiles.meter.clientSettings.powerMode: must be one of PSM, DRX, E_DRX, got "
        "'SLEEPY'",
        "device_profiles.meter.clientSettings.psmActivityTimer: must be 0 to 604800000 ms, "
        "got -1",
        "device_profiles.meter.clientSettings.edrxCycle: expected an integer, got 'soon'"]


def test_the_default_windows_and_the_transport_log():
    coap = load_text("", {}).coap
    assert (coap.psm_activity_timer, coap.paging_transmission_window, coap.transport_log) == (
        10.0, 10.0, False)
    coap = load_text("", {"COAP_PSM_ACTIVITY_TIMER": "30", "COAP_TRANSPORT_LOG": "true"}).coap
    assert (coap.psm_activity_timer, coap.transport_log) == (30.0, True)
    for bad in ("0", "inf", "nan", "-5"):
        with pytest.raises(ConfigError, match="coap.paging_transmission_window: must be"):
            load_text("", {"COAP_PAGING_TRANSMISSION_WINDOW": bad})


def test_an_efento_profile_has_no_payload_type():
    # the settings type the names; the payload formats check them (tests/core/test_registry)
    found = profiles("{a: {coapDeviceType: LWM2M}, b: {coapDeviceType: EFENTO, "
                     "transportPayloadType: PROTOBUF}}")
    problems = [INSTALLED.check(found[name], "device_profiles.%s." % name)[1] for name in "ab"]
    assert problems == [
        ["device_profiles.a.coapDeviceType: must be DEFAULT or EFENTO, got 'LWM2M'"],
        ["device_profiles.b.transportPayloadType: an EFENTO profile has none (its sensors send "
         "Efento's own messages)"]]
