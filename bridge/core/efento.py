"""Efento NB-IoT sensors' device API: ``/efento/m``, ``/efento/i``, ``/efento/c``, ``/efento/t``.

As ThingsBoard's ``CoapEfentoTransportResource`` serves them (the paths are ThingsBoard's:
an Efento sensor's endpoints are at most 11 characters, so ``/api/v1/...`` cannot be
configured on one). A POST carries a Protocol Buffers message (``formats/efento_proto``);
the device is the registry's owner of the message's ``cloud_token`` (its access token);
its device type's profile must be ``coapDeviceType: EFENTO``. In ThingsBoard's order:

* a payload that does not decode: 5.00 (ThingsBoard's answer);
* an unknown or empty token: 4.01;
* a device of another profile: 4.00; a measurement message with no channels: 4.00;
* then the device's request budget (4.29), and the uplink goes through the outbox as every
  uplink does: a CON request gets 2.01 once it is stored; a NON request gets no answer
  (Efento's sensors save their battery so, and ThingsBoard answers only CON requests:
  ``Reply.quiet``, which the transport carries out);
  errors are answered in both cases.

Measurements and device information become telemetry, the configuration client attributes
(``formats/efento.py`` says how). ``GET /efento/t`` needs no token: 2.05 with the time as
4 bytes, big-endian epoch seconds. Other paths under ``/efento``, or the wrong method for a
resource, get 4.00 as with ThingsBoard (methods other than GET and POST 4.05).
"""

from __future__ import annotations

from typing import Any, List, Optional

from . import codes, gateway, routes
from .actions import Authenticated, Reply, Request
from .auth import AccessToken, Authenticator
from .formats import Formats
from .formats.efento import NAME, EfentoFormat, epoch_seconds
from .formats.efento_proto import EfentoMessages
from .limits import RequestLimits
from .parts import Action, Part, error_reply
from .uplinks import Uplinks

# feature -> (the message it posts, what it becomes)
MESSAGES = {routes.EFENTO_MEASUREMENTS: "ProtoMeasurements",
            routes.EFENTO_DEVICE_INFO: "ProtoDeviceInfo",
            routes.EFENTO_CONFIGURATION: "ProtoConfig"}


class Efento(Part):
    def __init__(self, auth: Authenticator, limits: RequestLimits, uplinks: Uplinks,
                 formats: Formats, messages: Optional[EfentoMessages]):
        """``messages``: Efento's compiled messages (None without protoc: the POSTs then
        get 5.03, saying why)."""
        super().__init__()
        self.auth = auth
        self.limits = limits
        self.uplinks = uplinks
        self.formats = formats
        self.reader = EfentoFormat(messages) if messages is not None else None
        self.stats = {"efento_uplinks": 0}

    def on_request(self, request: Request, feature: str, now: float) -> List[Action]:
        if feature == routes.EFENTO_TIME:
            if request.method != codes.GET:
                raise codes.BadRequest("/efento/t takes GET")
            return [Reply(request.ref, codes.CONTENT, epoch_seconds(now))]  # no Content-Format
        if request.method != codes.POST:
            raise codes.BadRequest("/efento/m, /efento/i and /efento/c take POST")
        reader = self.reader
        if reader is None:
            raise codes.ServiceUnavailable("Efento messages need protoc, which is not "
                                           "installed on the bridge")
        msg = reader.decode(MESSAGES[feature], request.payload)
        device = self.auth.authenticate(AccessToken(msg.cloud_token), request.remote, now)
        try:
            if self.formats.of(device.type).name != NAME:
                raise codes.BadRequest("device type %r is not an EFENTO profile "
                                       "(device_profiles: coapDeviceType EFENTO)"
                                       % device.type[:64])
            if self.limits.devices.enabled:
                self.limits.device(device, now)
            topic, body = self._message(reader, feature, device.name, msg, now)
            actions = self.uplinks.store(device, topic, body, request.ref, now, quiet=True)
        except codes.CoapError as err:
            return [Authenticated(request.ref), error_reply(request.ref, err, True)]
        self.stats["efento_uplinks"] += 1
        return [Authenticated(request.ref)] + actions

    def _message(self, reader: EfentoFormat, feature: str, name: str, msg: Any,
                 now: float) -> gateway.Message:
        if feature == routes.EFENTO_MEASUREMENTS:
            return reader.measurements_message(name, msg)
        if feature == routes.EFENTO_DEVICE_INFO:
            return reader.device_info_message(name, msg, now)
        values = reader.configuration_values(msg)
        self.uplinks.learn_keys(name, values)
        return gateway.attributes(name, values)

