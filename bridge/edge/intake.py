"""``Intake``: what every transport service is built with.

A transport service (plain CoAP, CoAPs: ``bridge/listeners.py``; the RFC 8323
listeners: ``edge/reliable_service.py``) takes one ``Intake`` and its own settings in its
constructor, and nothing is assigned to it afterwards: its transport is built at start
from these, joins ``transports`` (``glue/transports.py``) while it runs, and leaves it on
stop. ``bridge/service.py`` builds the one ``Intake`` from the bridge's parts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Intake:
    reactor: Any
    rng: random.Random
    handler: Callable[..., Any]  # the request handler (``CoapRequests.handle``)
    on_result: Callable[[int, str], None]  # the fate of each notification sent
    on_peer_gone: Callable[[Any], None]  # a peer ended (its observations end too)
    transports: Any  # ``glue.transports.Transports``
    commit: Callable[[], None]  # answer every stored uplink now (before a transport stops)
    registry_view: Any  # ``glue.lookup.RegistryView``: credentials and their changes
    counts: Any  # ``glue.request_counts``: the request metrics' transport label
    shared: bool  # a worker's: its ports shared with the other workers
