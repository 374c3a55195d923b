"""Access tokens -> devices, from the registry; its file is looked at once per reactor turn."""

from __future__ import annotations

from typing import Any, Optional

from ..core.actions import Device
from ..registry import Registry


class TurnLookup:
    """The core's ``lookup``. ``found`` says whether the last lookup knew the token
    (the request adapter reads it after ``on_request``: the request carried a valid
    access token, so its answer needs no amplification limit)."""

    def __init__(self, reactor: Any):
        self.reactor = reactor
        self.registry: Optional[Registry] = None  # set while the registry service runs
        self.found = False
        self._checked = False

    def __call__(self, token: str) -> Optional[Device]:
        device = None
        if self.registry is not None:
            recheck = not self._checked
            if recheck:  # the first lookup of this reactor turn looks at the file
                self._checked = True
                self.reactor.callLater(0, self._turn_over)
            device = self.registry.lookup(token, recheck)
        self.found = device is not None
        return device

    def _turn_over(self) -> None:
        self._checked = False
