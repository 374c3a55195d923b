"""UDP ports shared by the worker processes of one host: ``SO_REUSEPORT``.

Twisted's ``listenUDP`` has no option for ``SO_REUSEPORT``, so ``listen_udp``
makes the socket itself (the option set before ``bind``) and gives it to the
reactor with ``adoptDatagramPort``; with ``shared=False`` it is plain
``listenUDP``, as a single process has always listened (a second program on
the port is then refused, not silently given half of the traffic).

With ``SO_REUSEPORT`` the kernel spreads datagrams over the sockets bound to
the port by a hash of the source address and port (Linux), so one device's
endpoint stays on one worker while the set of workers stays the same. Any UDP
server of the bridge (CoAP on 5683, DTLS on 5684) listens through this.

``port_free`` is the supervisor's look before it starts workers: a port held
by another program (a reuse-port group of another bridge included) cannot be
bound without the option.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorSocket, IReactorUDP
from twisted.internet.protocol import DatagramProtocol


def _family(interface: str) -> int:
    return socket.AF_INET6 if ":" in interface else socket.AF_INET


def bind_socket(port: int, interface: str, shared: bool) -> socket.socket:
    """A UDP socket bound to ``interface``:``port`` (``SO_REUSEPORT`` first when ``shared``),
    non-blocking; raises ``CannotListenError`` as ``listenUDP`` does."""
    sock = socket.socket(_family(interface), socket.SOCK_DGRAM)
    try:
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
    except OSError as exc:
        sock.close()
        raise CannotListenError(interface, port, exc)
    sock.setblocking(False)
    return sock


def listen_udp(reactor: Any, protocol: DatagramProtocol, port: int, interface: str,
               max_packet_size: int, shared: bool = False) -> Any:
    """Listen for ``protocol`` on UDP ``interface``:``port``; ``shared``: with
    ``SO_REUSEPORT``, beside the other workers. Returns the reactor's port."""
    if not shared:
        udp: IReactorUDP = reactor
        return udp.listenUDP(port, protocol, interface=interface, maxPacketSize=max_packet_size)
    sock = bind_socket(port, interface, shared=True)
    try:
        adopter: IReactorSocket = reactor
        return adopter.adoptDatagramPort(sock.fileno(), sock.family, protocol,
                                         maxPacketSize=max_packet_size)
    finally:
        sock.close()  # the reactor holds its own duplicate of the descriptor


def port_free(port: int, interface: str) -> None:
    """Raise ``CannotListenError`` if UDP ``interface``:``port`` cannot be bound alone."""
    bind_socket(port, interface, shared=False).close()
