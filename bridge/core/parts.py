"""What the parts of the core share, and the one interface the facade fans out through.

Each concern of the gateway (devices, uplinks, the outbox, attributes, RPC, downloads,
provisioning, ...) is a ``Part`` that owns its state. ``GatewayCore`` calls every part's
hooks in turn for the events that concern them all (a timer tick, the link going up or
down, the platform renaming or deleting a device), so a new part adds its own hooks and
edits no shared method.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Union

from . import codes
from .actions import (Created, DeadLetter, Delete, DeleteDevice, LoadBacklog, Log, Notify,
                      Provision, Publish, RenameDevice, Reply, ResetLink, ServePackage, Store,
                      StoreMany, Withdraw)
from .codes import CoapError

if TYPE_CHECKING:  # the core reads the config dataclasses; it does not load them
    from ..settings.root import Config

Action = Union[Reply, Publish, Notify, RenameDevice, DeleteDevice, Log, Store, StoreMany, Created,
               Delete, DeadLetter, ResetLink, Provision, ServePackage, LoadBacklog, Withdraw]

RETRY_AFTER = 5  # Max-Age (s) of a 5.03 while the link is down or the outbox full


class Shared:
    """The little state more than one part reads: the settings, whether the gateway
    connection is up, and the publish references (unique across parts: a PUBACK is
    routed by its ref)."""

    def __init__(self, config: "Config"):
        self.config = config
        self.link_up = False
        self.refs: Iterator[int] = itertools.count(1)  # next(shared.refs)

    def require_link(self) -> None:
        if not self.link_up:
            raise codes.ServiceUnavailable("upstream broker not connected", max_age=RETRY_AFTER)


class Part:
    """A concern of the core. Every hook is optional; the facade calls each on every part,
    in the order of ``GatewayCore.parts``."""

    def __init__(self) -> None:
        self.stats: Dict[str, int] = {}  # counters; the facade sums them by name

    def on_tick(self, now: float, slow: bool) -> List[Action]:
        """Expire what is due. ``slow``: once a second, for work that scans every device."""
        return []

    def on_tick_end(self, now: float, slow: bool) -> List[Action]:
        """After every part's ``on_tick``, while the link is up: send what is due."""
        return []

    def on_link_up(self, now: float) -> List[Action]:
        return []

    def on_link_down(self, now: float) -> List[Action]:
        return []

    def rename(self, old: str, new: str) -> None:
        """The platform renamed device ``old`` to ``new``: follow it."""

    def forget(self, name: str) -> List[Action]:
        """The platform deleted device ``name``: drop it (and answer what waited for it)."""
        return []


def error_reply(ref: int, err: CoapError, authenticated: bool = False) -> Reply:
    """The answer ``err`` stands for; ``authenticated``: the request's credential was valid."""
    return Reply(ref, err.code, err.reason.encode("utf-8"),
                 codes.TEXT_PLAIN if err.reason else None, err.max_age, err.size1, err.reason,
                 None, authenticated)


def unavailable(request_ref: int, reason: str) -> Reply:
    return Reply(request_ref, codes.SERVICE_UNAVAILABLE, max_age=RETRY_AFTER, reason=reason)


def address(remote: Any) -> Any:
    """The source address of a remote (host, port), or of a DTLS session (its ``address``):
    limits apply per address, not per port or session."""
    if not isinstance(remote, tuple):
        remote = getattr(remote, "address", remote)
    return remote[0] if isinstance(remote, tuple) and remote else remote
