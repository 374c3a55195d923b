"""The registry as the core sees it: plain data, refreshed by the edge once per turn.

No event of the core does I/O: before the first request of a reactor turn reaches
the core, the request adapter calls ``refresh()``, which asks SQLite once whether
the file changed (``PRAGMA data_version``) and reloads the registry's copy if so.
The core's lookups are then dictionary reads: ``RegistryView.get`` (access token),
``certificate`` and ``psk`` (what a DTLS session verified, ``credential_lookups``), and
``token_of`` (a device's token, for OTA from upstream).

The DTLS transport reads the keys through ``psk_key`` (synchronous, in its handshake),
and the composition ends the sessions whose credential ``credential_gone`` says left the
registry; ``on_change`` callbacks run after a refresh that found the file changed, in a
reactor turn of their own (a refresh can happen inside a DTLS handshake's PSK callback,
which must not end sessions under the transport's feet).

The registry is the SQLite ``Registry`` or, with ``REGISTRY_URL=postgresql://``,
``bridge.edge.shared_registry.SharedRegistry``, whose ``refresh()`` only puts in
place the copy its listening thread loaded (no query on the reactor). Writes the
bridge makes go through ``write``: a Deferred either way (SQLite's fires at once).

With a shared registry the platform's renames and deletes not yet in its copy
(``bridge.glue.platform_changes``) are in ``renamed`` (base name -> current name, or
None: deleted), and every lookup passes the device it finds through it; an empty
``renamed`` costs a lookup one test.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import defer

from ..core.actions import Device
from ..core.auth import Certificate, CredentialLookups, PresharedKey
from ..core.platform_changes import mapped
from ..registry import Registry, RegistryError


class RegistryView:
    def __init__(self, reactor: Any):
        self.reactor = reactor
        self.registry: Optional[Registry] = None  # set while the registry service runs
        self.devices: Dict[str, Device] = {}  # the registry's copies, updated in place
        self.certificates: Dict[str, Device] = {}
        self.psk: Dict[str, Tuple[Device, bytes]] = {}
        self.on_change: List[Callable[[], None]] = []  # after a refresh that found changes
        self.renamed: Dict[str, Optional[str]] = {}  # the platform's changes in flight
        self.journal_refresh: Optional[Callable[[], bool]] = None  # other workers' changes
        self._tokens: Optional[Dict[str, str]] = None  # device name -> token, built on use
        self._fresh = False  # refreshed in this reactor turn
        self._announcing = False  # on_change callbacks scheduled

    def attach(self, registry: Optional[Registry]) -> None:
        self.registry = registry
        self.devices = registry.devices if registry is not None else {}
        self.certificates = registry.certificates if registry is not None else {}
        self.psk = registry.psk if registry is not None else {}
        self._tokens = None
        self._fresh = False

    def credential_lookups(self) -> CredentialLookups:
        return CredentialLookups(self.certificate, self.psk_device, self.token_of)

    # -- the core's lookups (this turn's copy) --------------------------------------------

    def get(self, token: str) -> Optional[Device]:
        """The core's lookup: the device of access ``token`` in this turn's copy, or None."""
        if self.renamed:  # the platform's changes in flight: rare, so tested first
            device = self.devices.get(token)
            return mapped(device, self.renamed) if device is not None else None
        return self.devices.get(token)

    def certificate(self, sha3: str) -> Optional[Device]:
        device = self.certificates.get(sha3)
        if self.renamed and device is not None:
            return mapped(device, self.renamed)
        return device

    def psk_device(self, identity: str) -> Optional[Device]:
        entry = self.psk.get(identity)
        if entry is None:
            return None
        return mapped(entry[0], self.renamed) if self.renamed else entry[0]

    def token_of(self, name: str) -> Optional[str]:
        if self._tokens is None:
            tokens = {}
            for token, device in self.devices.items():
                current = mapped(device, self.renamed) if self.renamed else device
                if current is not None:
                    tokens[current.name] = token
            self._tokens = tokens
        return self._tokens.get(name)

    # -- the DTLS transport's ------------------------------------------------------------

    def psk_key(self, identity: str) -> Optional[bytes]:
        """The key of PSK ``identity`` (None: unknown), as of the file now (a handshake
        can come before any request of its turn)."""
        self.refresh()
        entry = self.psk.get(identity)
        if entry is None or (self.renamed and mapped(entry[0], self.renamed) is None):
            return None
        return entry[1]

    def credential_gone(self, credential: Any, key_used: Optional[bytes] = None) -> bool:
        """Whether a session that verified ``credential`` must end: its certificate or PSK
        identity is no longer registered to a live device, or (given ``key_used``, the key
        the session was established with) the identity's key changed. A session without a
        credential (None: the token in each request decides) never has to."""
        if type(credential) is Certificate:
            return self.certificate(credential.sha3) is None
        if type(credential) is PresharedKey:
            entry = self.psk.get(credential.identity)
            return (entry is None or self.psk_device(credential.identity) is None
                    or (key_used is not None and entry[1] != key_used))
        return False

    # -- refreshing --------------------------------------------------------------------

    def refresh(self) -> None:
        """Look at the registry file, at most once per reactor turn."""
        if self._fresh or self.registry is None:
            return
        self._fresh = True
        self.reactor.callLater(0, self._turn_over)
        self._reload()

    def write(self, method: str, *args: Any, **kwargs: Any) -> defer.Deferred:
        """``registry.<method>(*args, **kwargs)`` as a Deferred (``add`` with a certificate
        for X.509 auto-registration, say): run off the reactor for a shared registry, at
        once for SQLite (a local file, as before)."""
        registry = self.registry
        if registry is None:
            return defer.fail(RegistryError("the device registry is closed"))
        run = getattr(registry, "run", None)
        if run is not None:
            return run(method, *args, **kwargs).addCallback(self._written)
        return defer.maybeDeferred(getattr(registry, method), *args, **kwargs).addCallback(
            self._written)

    def _written(self, result: Any) -> Any:
        # The next request must see this write even within the same reactor turn: the
        # port reads datagrams in a loop, and a device that got its provisioning answer
        # can post with its new token before the loop ends (measured: 4.01 in 3 of 8
        # runs on a loaded machine). SQLite's file is read again now; a shared registry's
        # copy as soon as its notification is in.
        self._fresh = False
        if self.registry is not None and getattr(self.registry, "run", None) is None:
            self._reload()
        return result

    def changed(self) -> None:
        """This process changed the registry (a rename, a delete, a registration): read it
        again now."""
        if self.registry is not None:
            self._reload()

    def overlay_changed(self) -> None:
        """``renamed`` changed: the next lookups see it, sessions that lost it end."""
        self._tokens = None
        if self.on_change and not self._announcing:
            self._announcing = True
            self.reactor.callLater(0, self._announce)

    def _reload(self) -> None:
        assert self.registry is not None
        changed = self.registry.refresh()
        if self.journal_refresh is not None and self.journal_refresh():
            changed = True
        if changed:
            self.overlay_changed()

    def _announce(self) -> None:
        self._announcing = False
        for callback in list(self.on_change):
            callback()

    def _turn_over(self) -> None:
        self._fresh = False
