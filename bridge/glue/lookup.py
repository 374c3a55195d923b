"""The registry as the core sees it: plain data, refreshed by the edge once per turn.

No event of the core does I/O: before the first request of a reactor turn reaches
the core, the request adapter calls ``refresh()``, which asks SQLite once whether
the file changed (``PRAGMA data_version``) and reloads the registry's copy if so.
The core's token lookup is then ``RegistryView.get``, a dictionary read.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from ..core.actions import Device
from ..registry import Registry


class RegistryView:
    def __init__(self, reactor: Any):
        self.reactor = reactor
        self.registry: Optional[Registry] = None  # set while the registry service runs
        self.devices: Dict[str, Device] = {}  # the registry's copy, updated in place
        self._fresh = False  # refreshed in this reactor turn
        self.on_change: List[Callable[[], None]] = []  # told when a refresh found changes

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
        if self.registry.refresh():
            self._changed()

    def changed(self) -> None:
        """This process changed the registry (a rename or delete): read it again now."""
        if self.registry is not None and self.registry.refresh():
            self._changed()

    def _changed(self) -> None:
        for listener in self.on_change:
            listener()

    def _turn_over(self) -> None:
        self._fresh = False
