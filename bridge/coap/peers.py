"""Peers as the CoAP layers see them: opaque hashable keys, named for logs.

A peer is a (host, port) pair from the UDP port, or whatever hashable key another
transport gives (a DTLS session, an RFC 8323 connection); the layers only compare, hash
and print it.
"""

from __future__ import annotations

from typing import Hashable


def describe(peer: Hashable) -> str:
    """A peer for logs: ``host:port``, ``[v6]:port``, or what a non-address peer says it is."""
    if type(peer) is not tuple:
        return str(peer)
    address, port = peer[0], peer[1]
    return "[%s]:%d" % (address, port) if ":" in str(address) else "%s:%d" % (address, port)
