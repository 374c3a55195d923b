"""Provisioning devices through the bridge: locally, or with the platform's provisioning API.

Upstream mode opens a short-lived MQTT session with the username
``provision``, subscribes to ``/provision/response`` and publishes the
device's request on ``/provision/request`` (spec thingsboard-gateway-mqtt.md
§4.2). ThingsBoard answers each session on that session alone, so requests
for different names run at once, each on its own session, up to
``provisioning.max_concurrent``; more get 5.03 with Max-Age. Requests for
the same name wait for each other (and count towards the bound), so the same
name provisioned twice at once yields exactly one device. (A generic broker
passes every answer to every provisioning session: there, set the bound to 1.)

A request that came as protobuf goes to the platform as the same JSON request, and its
answer (ThingsBoard's JSON, the platform's or the bridge's own) is re-encoded for the
device as a ``ProvisionDeviceResponseMsg`` (``core.provision.protobuf_answer``).
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any, Callable, Dict, Optional, Set

from twisted.internet import defer

from ..settings import Config
from ..core import codes, provision
from ..core.provision import ProvisionProfile, ProvisionRequest
from ..logs import logger
from ..registry import RegistryError, RegistryUnavailable, mask
from .short_session import SessionFailed, ShortSession, ShortSessions, random_name

log = logger("provision")

REQUEST_TOPIC = "/provision/request"
RESPONSE_TOPIC = "/provision/response"
Answer = Callable[..., None]  # (request ref, code, body, max_age=None, content_format=50)


class _Session(ShortSession):
    """One upstream provisioning request: ``start()`` fires with the platform's answer."""

    def __init__(self, provisioner: "Provisioner", body: bytes):
        super().__init__(provisioner.reactor, provisioner.config.mqtt, "provision", "provision",
                         [RESPONSE_TOPIC], provisioner.config.provisioning.timeout, "timeout")
        self.body = body

    def link_up(self) -> None:
        self.publish(REQUEST_TOPIC, self.body)

    def message(self, topic: str, payload: bytes) -> None:
        if topic == RESPONSE_TOPIC:
            self.succeed(payload)


class Provisioner:
    def __init__(self, config: Config, reactor: Any, write: Callable[..., defer.Deferred],
                 answer: Answer, sessions: Optional[ShortSessions] = None, fixed: Any = None):
        """``write``: the registry write (a Deferred); ``answer`` takes ThingsBoard's JSON
        answers; ``fixed``: ThingsBoard's fixed messages (``formats.fixed.FixedMessages``),
        to answer protobuf requests in kind."""
        self.config = config
        self.reactor = reactor
        self.write = write  # (registry method, *args) -> Deferred (glue.lookup.RegistryView)
        self.answer = answer
        self.sessions = sessions if sessions is not None else ShortSessions()
        self.in_progress = 0  # requests running or waiting for their name
        self.names: Dict[str, defer.DeferredLock] = {}  # device name -> its requests, in turn
        self.refused = 0  # answered 5.03: max_concurrent were in progress
        self.profiles = [ProvisionProfile(p.key, p.secret, p.device_type, p.strategy)
                         for p in config.provisioning.profiles]
        self.fixed = fixed
        self.protobuf_refs: Set[int] = set()  # requests that came as protobuf
        self.answer = functools.partial(self._in_kind, answer)

    def handle(self, ref: int, request: ProvisionRequest) -> None:
        if request.protobuf:
            self.protobuf_refs.add(ref)
        settings = self.config.provisioning
        if self.in_progress >= settings.max_concurrent:
            self.refused += 1
            log.debug("Provisioning of {device} refused: {count:plural:request} in progress",
                      device=request.device_name, count=self.in_progress)
            self.answer(ref, codes.SERVICE_UNAVAILABLE, b"",
                        max_age=max(1, math.ceil(settings.timeout)))
            return
        self.in_progress += 1
        name = request.device_name
        lock = None
        if name:  # a nameless request gets a fresh random name: nothing to wait for
            lock = self.names.get(name)
            if lock is None:
                lock = self.names[name] = defer.DeferredLock()
            d = lock.run(self._provision, ref, request)
        else:
            d = defer.maybeDeferred(self._provision, ref, request)
        d.addBoth(self._finished, name, lock)
        d.addErrback(self._failed, ref)

    def _finished(self, result: Any, name: str, lock: Optional[defer.DeferredLock]) -> Any:
        self.in_progress -= 1
        if lock is not None and not lock.locked and not lock.waiting:
            self.names.pop(name, None)
        return result

    def _failed(self, failure: Any, ref: int) -> None:
        log.failure("Provisioning failed", failure=failure)
        self.answer(ref, codes.INTERNAL_SERVER_ERROR, b"")

    def _provision(self, ref: int, request: ProvisionRequest) -> Optional[defer.Deferred]:
        if self.config.provisioning.mode == "local":
            return self._local(ref, request)
        return self._upstream(ref, request)

    def _local(self, ref: int, request: ProvisionRequest) -> Optional[defer.Deferred]:
        profile = provision.find_profile(request, self.profiles)
        name = request.device_name or random_name()
        if profile is None:
            log.info("Provisioning of {device} refused: unknown key or wrong secret", device=name)
            self._reply(ref, provision.not_found())
            return
        if request.credentials_type != "ACCESS_TOKEN":
            log.info("Provisioning of {device} refused: local mode issues access tokens only",
                     device=name)
            self._reply(ref, provision.failure())
            return
        token = request.token or random_name()
        d = self.write("provision", name, token, profile.device_type, profile.strategy)
        d.addCallbacks(self._local_done, self._registry_unavailable,
                       callbackArgs=(ref, name, token, profile), errbackArgs=(ref, name))
        return d

    def _local_done(self, accepted: bool, ref: int, name: str, token: str,
                    profile: ProvisionProfile) -> None:
        if not accepted:
            log.info("Provisioning of {device} refused by strategy {strategy}", device=name,
                     strategy=profile.strategy)
            self._reply(ref, provision.failure())
            return
        log.info("Provisioned {device} (type {type}, token {token})", device=name,
                 type=profile.device_type, token=mask(token))
        self._reply(ref, provision.success(token))

    def _registry_unavailable(self, failure: Any, ref: int, name: str) -> None:
        """The shared registry is unreachable: 5.03, the device asks again later."""
        failure.trap(RegistryUnavailable)
        log.warn("Provisioning of {device}: {error}", device=name, error=str(failure.value))
        self.answer(ref, codes.SERVICE_UNAVAILABLE, b"",
                    max_age=max(1, math.ceil(self.config.provisioning.timeout)))

    def _upstream(self, ref: int, request: ProvisionRequest) -> defer.Deferred:
        body = dict(request.body)
        # ThingsBoard names a nameless device itself and does not say the name; name it
        # here so that the bridge knows which device the credentials belong to.
        name = request.device_name or random_name()
        body["deviceName"] = name
        d = _Session(self, json.dumps(body).encode("utf-8")).start(self.sessions)
        d.addCallbacks(self._upstream_done, self._no_answer, callbackArgs=(ref, name),
                       errbackArgs=(ref, name))
        return d

    def _no_answer(self, failure: Any, ref: int, name: str) -> None:
        failure.trap(SessionFailed)
        log.warn("Provisioning of {device}: the platform did not answer ({reason})",
                 device=name, reason=failure.value.reason)
        self.answer(ref, codes.GATEWAY_TIMEOUT, b"")

    def _upstream_done(self, payload: bytes, ref: int, name: str) -> Optional[defer.Deferred]:
        try:
            doc = json.loads(payload)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            log.warn("Provisioning of {device}: the platform's answer is not JSON", device=name)
            self.answer(ref, codes.BAD_GATEWAY, b"")
            return None
        if doc.get("status") != "SUCCESS":
            log.info("Provisioning of {device} refused by the platform: {status}", device=name,
                     status=doc.get("status"))
            self.answer(ref, codes.BAD_REQUEST, payload)
            return None
        token = doc.get("credentialsValue")
        if doc.get("credentialsType", "ACCESS_TOKEN") == "ACCESS_TOKEN" and isinstance(token, str):
            d = self.write("store_credentials", name, token, self.config.devices.default_type)
            d.addCallbacks(self._stored, self._not_stored, callbackArgs=(ref, name, token,
                                                                         payload),
                           errbackArgs=(ref, name))
            return d
        log.info("Provisioned {device} with {kind} credentials, which it cannot use here",
                 device=name, kind=doc.get("credentialsType"))
        self.answer(ref, codes.CREATED, payload)
        return None

    def _stored(self, _: None, ref: int, name: str, token: str, payload: bytes) -> None:
        log.info("Provisioned {device} through the platform (token {token})", device=name,
                 token=mask(token))
        self.answer(ref, codes.CREATED, payload)

    def _not_stored(self, failure: Any, ref: int, name: str) -> None:
        failure.trap(RegistryError)
        log.error("Provisioned {device} on the platform, but the registry refused it: "
                  "{error}", device=name, error=str(failure.value))
        self.answer(ref, codes.INTERNAL_SERVER_ERROR, b"")

    def _in_kind(self, answer: Answer, ref: int, code: int, body: bytes,
                 max_age: Optional[int] = None) -> None:
        """Answer request ``ref``: a JSON ``body`` as it is, or re-encoded as protobuf when
        the request came so."""
        if ref not in self.protobuf_refs:
            answer(ref, code, body, max_age=max_age)
            return
        self.protobuf_refs.discard(ref)
        if not body:
            answer(ref, code, body, max_age=max_age)
            return
        answer(ref, code, provision.protobuf_answer(json.loads(body), self.fixed),
               max_age=max_age, content_format=codes.OCTET_STREAM)

    def _reply(self, ref: int, body: dict) -> None:
        status = body.get("status")
        self.answer(ref, codes.CREATED if status == "SUCCESS" else codes.BAD_REQUEST,
                    json.dumps(body, separators=(",", ":")).encode("utf-8"))
