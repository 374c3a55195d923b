"""The RFC 8323 listeners' TCP sockets shared by the worker processes of one host
(``coap.workers`` > 1).

Twisted can listen on a socket it did not make (``adoptStreamPort``), but not on one
that outlives the process: so the supervisor binds and listens on each enabled
listener's port itself (``bind_listening``), holds the socket for as long as it runs,
and hands the same socket to every worker as an inherited descriptor
(``COAPBRIDGE_TCP_FD``, ``_TLS_FD``, ``_WS_FD``, ``_WSS_FD``: ``inherited``), which the
worker listens on through Twisted's ``AdoptedStreamServerEndpoint`` (``endpoint``).
Each worker accepts from the one queue of the port; a
connection then lives in the process that accepted it (its CSM, its blocks, its
observations), with nothing to keep on one worker across connections (unlike UDP,
where a device's exchanges must stay on one socket: ``edge/udp.py``).

A worker that dies closes only its copy of the descriptor: the port stays listening,
the other workers go on accepting (none of their connections moves, no new one is
refused or left in a queue nobody reads), and only the dead worker's own connections
end, their devices connecting again to the workers that are left. The other way,
one ``SO_REUSEPORT`` socket per worker, spreads connections by a hash of their
addresses, but the kernel keeps hashing new connections to a dead worker's socket:
held by the supervisor, they wait in its queue until the restart (a second or more of
backoff, for good when the supervisor gives up); closed with the worker, its queue is
reset and the group's array reshuffled (``edge/udp.py``). Not taken.

With one queue, every idle worker is woken by a new connection and the first to call
``accept`` gets it (Twisted's port then accepts as many as are queued, at most as many
as it did the time before): the spread follows which worker is free, as measured in
docs/deployment.md.
"""

from __future__ import annotations

import socket
from typing import Any, Dict, Mapping

from twisted.internet import endpoints
from twisted.internet.error import CannotListenError

from . import udp

BACKLOG = 1024  # as the single process's listenTCP endpoints
# the descriptors a worker gets the listeners on (after udp's 3 and 4), and their variables
FDS = {"tcp": 5, "tls": 6, "ws": 7, "wss": 8}
FD_ENV = {name: "COAPBRIDGE_%s_FD" % name.upper() for name in FDS}


def bind_listening(port: int, interface: str) -> socket.socket:
    """A TCP socket listening on ``interface``:``port``, as ``listenTCP`` makes it
    (``SO_REUSEADDR``, non-blocking); raises ``CannotListenError`` as it does."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((interface, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise CannotListenError(interface, port, exc)
    sock.setblocking(False)
    return sock


def endpoint(reactor: Any, fd: int, port: int) -> Any:
    """Twisted's ``AdoptedStreamServerEndpoint`` for inherited descriptor ``fd``, once it
    is seen to be a listening TCP socket bound to ``port`` (0: any); the endpoint closes
    the descriptor when it listens (the reactor keeps a duplicate). ``CannotListenError``
    (the descriptor closed) for a descriptor that is not such a socket."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise CannotListenError("", port, exc)
    listening = sock.type == socket.SOCK_STREAM and \
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    bound = sock.getsockname()[1] if listening else None
    if bound is None or (port and bound != port):
        sock.close()
        raise CannotListenError("", port, OSError(
            "inherited descriptor %d is not a TCP socket listening on port %d" % (fd, port)))
    family = sock.family
    sock.detach()  # the descriptor stays open for the endpoint
    return endpoints.AdoptedStreamServerEndpoint(reactor, fd, family)


def inherited(environ: Mapping[str, str]) -> Dict[str, int]:
    """{"tcp": fd, ...}: the listening sockets a worker was started with (none when it was
    not started by a supervisor that holds them)."""
    return udp.descriptors(environ, FD_ENV)
