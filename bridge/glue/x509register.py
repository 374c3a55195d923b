"""X.509 auto-registration (``dtls.x509.auto_register``): a verified certificate names
its device on first use, like ThingsBoard's X.509 chain provisioning strategy.

The DTLS transport hands over only certificates OpenSSL verified against
``dtls.ca_file``. Before a request whose session carries such a ``Certificate`` reaches
the core, ``AutoRegistration.ensure`` registers it when it is unknown and its subject CN
(or group 1 of ``cn_regex`` searched in it) names a device that does not exist yet: a
registry write at the edge, after which the view is read again, so the request finds
the device. The write is a Deferred (the registry view's ``write`` where it has one, for
a registry written off the reactor; SQLite's fires at once): requests with the same
certificate that come meanwhile wait for the same write, so nothing registers twice. A
second bridge on the same registry loses on the UNIQUE ``cert_sha3`` and finds the
other's row. A certificate that cannot be registered (no CN, no match, the name taken)
is logged once and then answered 4.01 by the core, counted as an unknown credential,
until the registry changes.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Set

from twisted.internet import defer
from twisted.python.failure import Failure

from ..settings import Config
from ..core.actions import Device
from ..core.auth import Certificate
from ..core.names import printable
from ..logs import logger
from ..registry import RegistryError
from .lookup import RegistryView

log = logger("bridge")
MAX_REFUSED = 10000  # certificates remembered as not registrable (then forgotten at once)


class AutoRegistration:
    def __init__(self, config: Config, view: RegistryView):
        settings = config.dtls.x509
        self.enabled = settings.auto_register
        self.pattern = re.compile(settings.cn_regex) if settings.cn_regex else None
        self.device_type = settings.device_type or config.devices.default_type
        self.view = view
        self.refused: Set[str] = set()  # certificate ids logged as not registrable
        self.writing: Dict[str, List[defer.Deferred]] = {}  # id -> requests waiting for it
        self.registered = 0  # devices registered, for the metrics
        view.on_change.append(self.refused.clear)  # a name may be free now

    def name_of(self, cn: Optional[str]) -> Optional[str]:
        """The device name a certificate's CN gives, or None."""
        if not cn:
            return None
        if self.pattern is None:
            return cn
        match = self.pattern.search(cn)
        if match is None:
            return None
        name = match.group(1) if self.pattern.groups else match.group(0)
        return name or None

    def ensure(self, credential: Any) -> Optional[defer.Deferred]:
        """Register ``credential``'s certificate if it is new and names a device: None
        when the request may go on at once, else a Deferred firing (with None) once the
        registration is done or refused."""
        if not self.enabled or type(credential) is not Certificate \
                or credential.sha3 in self.view.certificates or credential.sha3 in self.refused \
                or self.view.registry is None:
            return None
        waiter: defer.Deferred = defer.Deferred()
        if credential.sha3 in self.writing:
            self.writing[credential.sha3].append(waiter)
            return waiter
        name = self.name_of(credential.cn)
        if name is None:
            self._refuse(credential, "its subject CN %r names no device%s" % (
                credential.cn, " (dtls.x509.cn_regex does not match)" if self.pattern and
                credential.cn else ""))
            return None
        self.writing[credential.sha3] = [waiter]
        d = self._write("add", name, None, self.device_type, cert_sha3=credential.sha3)
        d.addCallbacks(self._registered, self._not_registered, (credential, name), None,
                       (credential,))
        d.addErrback(lambda failure: log.failure(
            "Registering the certificate {certificate} failed", failure=failure,
            certificate=credential.sha3))
        d.addBoth(self._done, credential.sha3)
        return waiter

    def _write(self, method: str, *args: Any, **kwargs: Any) -> defer.Deferred:
        write = getattr(self.view, "write", None)  # a registry written off the reactor
        if write is not None:
            return write(method, *args, **kwargs)
        return defer.maybeDeferred(getattr(self.view.registry, method), *args, **kwargs)

    def _registered(self, _: Any, credential: Certificate, name: str) -> None:
        self.registered += 1
        log.info("Registered device {device} (type {device_type}) by its certificate "
                 "{certificate} (dtls.x509.auto_register)", device=name,
                 device_type=self.device_type, certificate=credential.sha3)
        self.view.changed()
        if credential.sha3 not in self.view.certificates:
            # a shared registry tells of the new row by its notification, later: the
            # requests waiting for this registration must find it now (the notification's
            # copy replaces this one, the same)
            self.view.certificates[credential.sha3] = Device(name, self.device_type)

    def _not_registered(self, failure: Failure, credential: Certificate) -> None:
        failure.trap(RegistryError)
        self.view.changed()
        if credential.sha3 not in self.view.certificates:  # not another bridge's row
            self._refuse(credential, str(failure.value))

    def _done(self, _: Any, sha3: str) -> None:
        for waiter in self.writing.pop(sha3, []):
            waiter.callback(None)

    def _refuse(self, credential: Certificate, reason: str) -> None:
        if len(self.refused) >= MAX_REFUSED:
            self.refused.clear()
        self.refused.add(credential.sha3)
        log.warn("Certificate {certificate} (CN {cn}) not registered: {reason}",
                 certificate=credential.sha3, cn=printable(credential.cn or ""), reason=reason)
