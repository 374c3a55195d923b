"""The registry as the core sees it: plain data, refreshed by the edge once per turn.

No event of the core does I/O: before the first request of a reactor turn reaches
the core, the request adapter calls ``refresh()``, which asks SQLite once whether
the file changed (``PRAGMA data_version``) and reloads the registry's copy if so.
The core's token lookup is then ``RegistryView.get``, a dictionary read.

The registry is the SQLite ``Registry`` or, with ``REGISTRY_URL=postgresql://``,
``bridge.edge.shared_registry.SharedRegistry``, whose ``refresh()`` only puts in
place the copy its listening thread loaded (no query on the reactor). Writes the
bridge makes go through ``write``: a Deferred either way (SQLite's fires at once).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from twisted.internet import defer

from ..core.actions import Device
from ..registry import Registry, RegistryError


class RegistryView:
    def __init__(self, reactor: Any):
        self.reactor = reactor
        self.registry: Optional[Registry] = None  # set while the registry service runs
        self.devices: Dict[str, Device] = {}  # the registry's copy, updated in place
        self._fresh = False  # refreshed in this reactor turn

    def attach(self, registry: Optional[Registry]) -> None:
        self.registry = registry
        self.devices = registry.devices if registry is not None else {}
        self._fresh = False

    def get(self, token: str) -> Optional[Device]:
        """The core's lookup: the device of access ``token`` in this turn's copy, or None."""
        return self.devices.get(token)

    def refresh(self) -> None:
        """Look at the registry file, at most once per reactor turn."""
        if self._fresh or self.registry is None:
            return
        self._fresh = True
        self.reactor.callLater(0, self._turn_over)
        self.registry.refresh()

    def write(self, method: str, *args: Any, **kwargs: Any) -> defer.Deferred:
        """``registry.<method>(*args, **kwargs)`` as a Deferred (``add`` with a certificate
        for X.509 auto-registration, say): run off the reactor for a shared registry, at
        once for SQLite (a local file, as before)."""
        registry = self.registry
        if registry is None:
            return defer.fail(RegistryError("the device registry is closed"))
        run = getattr(registry, "run", None)
        if run is not None:
            return run(method, *args, **kwargs)
        return defer.maybeDeferred(getattr(registry, method), *args, **kwargs)

    def changed(self) -> None:
        """This process changed the registry (a rename or delete): read it again now."""
        if self.registry is not None:
            self.registry.refresh()

    def _turn_over(self) -> None:
        self._fresh = False
