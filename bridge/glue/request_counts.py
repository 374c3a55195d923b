"""CoAP requests counted by route, answer code and transport, for the metrics.

``coapbridge_coap_requests_total{route,code,transport}`` (and
``coapbridge_coap_errors_total``, the same for codes 4.xx and 5.xx) with bounded labels
only: ``route`` one of ``routes.METRIC_ROUTES``, ``code`` the CoAP response code
(``2.01``, ``4.01``...: at most 256), ``transport`` the name the peer's class was
registered under (``udp`` for a (host, port) tuple, ``dtls`` for a DTLS session: the
CoAPs service registers its session class), or for a class that serves several (the
RFC 8323 connections' ``StreamPeer``) the name of one of its attribute's known values
(``tcp``, ``tls``, ``ws``, ``wss``); ``other`` for anything nobody registered. No device
name or address ever becomes a label.

The count is kept on the hot path without a label lookup: a request takes its
``CodeCounts`` cell (one per route and peer class, found by one dict lookup) when it
comes, and its answer adds one to the cell's slot of its code (a list index).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

from ..core import codes
from ..core.routes import METRIC_ROUTES

OTHER = "other"


class CodeCounts:
    """The answers of one (route, transport), by code."""

    __slots__ = ("route", "transport", "codes")

    def __init__(self, route: str, transport: str):
        self.route = route
        self.transport = transport
        self.codes = [0] * 256


class RequestCounts:
    def __init__(self) -> None:
        self.transports: Dict[type, str] = {tuple: "udp"}
        # peer class -> (attribute, its value -> transport name): a label per instance
        self.by_attribute: Dict[type, Tuple[str, Dict[Any, str]]] = {}
        self._cells: Dict[Tuple[str, type], CodeCounts] = {}
        self._by_labels: Dict[Tuple[str, str], CodeCounts] = {}

    def register(self, peer_class: type, transport: str) -> None:
        """Peers of ``peer_class`` are counted under ``transport``."""
        self.transports[peer_class] = transport

    def register_by(self, peer_class: type, attribute: str, names: Dict[Any, str]) -> None:
        """Peers of ``peer_class`` are counted under ``names[peer.<attribute>]`` (a value
        not in ``names``: other)."""
        self.by_attribute[peer_class] = (attribute, dict(names))

    def static(self, peer_class: type) -> bool:
        """Whether every peer of the class is counted under one name (its cells may be
        kept by class)."""
        return peer_class not in self.by_attribute

    def cell(self, route: str, peer: Any) -> CodeCounts:
        """Where the answer to a request of ``route`` from ``peer`` is counted."""
        kind = type(peer)
        named = self.by_attribute.get(kind)
        if named is not None:
            if route not in METRIC_ROUTES:
                route = OTHER
            return self._labelled((route, named[1].get(getattr(peer, named[0], None), OTHER)))
        found = self._cells.get((route, kind))
        if found is None:
            if route not in METRIC_ROUTES:  # (a caller's mistake: still a bounded label)
                return self.cell(OTHER, peer)
            found = self._cells[(route, kind)] = self._new_cell(route, kind)
        return found

    def _new_cell(self, route: str, kind: type) -> CodeCounts:
        return self._labelled((route, self.transports.get(kind, OTHER)))

    def _labelled(self, labels: Tuple[str, str]) -> CodeCounts:
        found = self._by_labels.get(labels)
        if found is None:  # two peer classes of one transport share their cells
            found = self._by_labels[labels] = CodeCounts(*labels)
        return found

    def samples(self, errors_only: bool = False) -> Iterator[Tuple[List[str], int]]:
        """([route, code, transport], count) of every count above 0."""
        first = codes.BAD_REQUEST if errors_only else 0
        for cell in self._by_labels.values():
            counts = cell.codes
            for code in range(first, 256):
                if counts[code]:
                    yield [cell.route, codes.dotted(code), cell.transport], counts[code]

    def total(self) -> int:
        return sum(sum(cell.codes) for cell in self._by_labels.values())
