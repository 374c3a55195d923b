"""Payload formats are chosen per device type (bridge.core.formats): the core parses and
encodes a device's payloads only through its format."""

from bridge.core import codes, gateway
from bridge.core.actions import Device, Request, Store, StoreMany
from bridge.core.formats.json import JsonFormat
from bridge.core.session import GatewayCore
from coreconfig import core_config, handled

NOW = 1_700_000_000.0
PEER = ("10.0.0.1", 5683)
DEVICES = {"tokj": Device("Dev J", "thermo"), "tokc": Device("Dev C", "csv-meter")}


class CsvFormat(JsonFormat):
    """A made-up second format: ``key=value;key=value`` telemetry."""

    name = "csv"

    def telemetry(self, device, payload, now):
        values = dict(item.split("=") for item in payload.decode().split(";"))
        return super().telemetry(device, gateway_json(values), now)


def gateway_json(values):
    from bridge.core.payloads import dumps
    return dumps({k: float(v) for k, v in values.items()})


def make_core():
    csv, json = CsvFormat(), JsonFormat()
    asked = []

    def format_of(device_type):
        asked.append(device_type)
        return csv if device_type == "csv-meter" else json
    core = GatewayCore(core_config(), DEVICES.get, format_of=format_of)
    core.on_link_up(NOW)
    return core, asked


def test_each_device_type_gets_its_own_format_asked_once_per_type():
    core, asked = make_core()
    batch = [(1, "tokc", "telemetry", b"t=21.5;h=40", PEER),
             (2, "tokj", "telemetry", b'{"t": 1}', PEER),
             (3, "tokc", "telemetry", b"t=22", PEER)]
    [store] = [a for a in core.on_uplinks(batch, NOW) if isinstance(a, StoreMany)]
    assert [e.device for e in store.entries] == ["Dev C", "Dev J", "Dev C"]
    assert all(e.topic == gateway.TELEMETRY for e in store.entries)
    assert b'"t":21.5' in store.entries[0].payload and b'"h":40.0' in store.entries[0].payload
    assert b'{"t": 1}' in store.entries[1].payload  # JSON: as sent and b'"t":22.0' in store.entries[2].payload
    assert sorted(asked) == ["csv-meter", "thermo"]


def test_a_request_outside_the_bulk_path_uses_the_device_format_too():
    core, _ = make_core()
    request = Request(7, codes.POST, ("api", "v1", "tokc", "telemetry"), b"t=3", remote=PEER)
    [store] = [a for a in handled(core, request, NOW) if isinstance(a, Store)]
    assert store.entry.device == "Dev C" and b'"t":3.0' in store.entry.payload


class TaggedFormat(CsvFormat):
    """Answers client-side RPCs in a form of its own, with a Content-Format of its own."""

    content_format = codes.OCTET_STREAM

    def rpc_result(self, payload):
        return b"csv:" + payload


def test_a_client_rpc_answer_uses_the_format_of_the_callers_type_known_or_not():
    tagged, json = TaggedFormat(), JsonFormat()
    core = GatewayCore(core_config(), DEVICES.get,
                       format_of=lambda t: tagged if t == "csv-meter" else json)
    core.on_link_up(NOW)
    call = Request(9, codes.POST, ("api", "v1", "tokc", "rpc"), b'{"method": "getTime"}',
                   remote=PEER)
    [publish] = [a for a in handled(core, call, NOW) if type(a).__name__ == "Publish"]
    core.devices.states.clear()  # the platform's answer may come when the device is not held
    n = publish.topic.rsplit("/", 1)[1]
    [reply] = core.on_message("v1/devices/me/rpc/response/" + n, b'{"t":1}', NOW)
    assert (reply.ref, reply.payload, reply.content_format) == (9, b'csv:{"t":1}',
                                                                 codes.OCTET_STREAM)
