"""UDP ports shared by the worker processes of one host: ``SO_REUSEPORT``.

Twisted's ``listenUDP`` has no option for ``SO_REUSEPORT``, so ``listen_udp``
makes the socket itself (the option set before ``bind``) and gives it to the
reactor with ``adoptDatagramPort``; with ``shared=False`` it is plain
``listenUDP``, as a single process has always listened (a second program on
the port is then refused, not silently given half of the traffic).

With ``SO_REUSEPORT`` the kernel spreads datagrams over the sockets bound to
the port by a hash of the source address and port (Linux), so one device's
endpoint stays on one worker while the set of sockets stays the same. Any UDP
server of the bridge (CoAP on 5683, DTLS on 5684) listens through this.

The set must stay the same when a worker dies. Linux keeps a reuse-port group's
sockets in an array and picks ``array[hash * n >> 32]``; a closed socket's slot
takes the last socket, and a new one is appended, so a worker that died and
bound again moved the devices of *other* workers too (measured with 40 source
ports and 2 workers: all 40 answered by the other worker after a ``kill -9`` and
restart when the killed one had bound first; with 3 or 4 workers, the devices of
two). So the supervisor binds the N sockets itself, in order (``SocketGroup``),
keeps them open for as long as it runs, and hands socket k to worker k as an
inherited descriptor (``COAPBRIDGE_COAP_FD``, ``COAPBRIDGE_DTLS_FD``: ``inherited``),
which the worker adopts (``listen_udp(..., inherited=fd)``). A worker's death
then changes nothing in the group: its devices' datagrams wait in its socket's
receive buffer until the restarted worker reads them, and no other device moves.

Other ways were weighed: a classic BPF program on the group
(``SO_ATTACH_REUSEPORT_CBPF``, choosing ``hash % N``) indexes the same array, so
it moves devices the same way once a socket leaves it; one socket read by all
workers would keep nothing on one worker (its deduplication, blocks and
relations); workers passing sockets among themselves would lose them with the
process that holds them. Only a process that outlives the workers can keep the
group whole, and the supervisor is that process.

``port_free`` is the supervisor's look before it binds the group: a port held
by another program (a reuse-port group of another bridge included) cannot be
bound without the option.
"""

from __future__ import annotations

import socket
from typing import Any, Dict, List, Mapping, Optional

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
               max_packet_size: int, shared: bool = False,
               inherited: Optional[int] = None) -> Any:
    """Listen for ``protocol`` on UDP ``interface``:``port``; ``shared``: with
    ``SO_REUSEPORT``, beside the other workers; ``inherited``: on that descriptor, a
    socket of the supervisor's group (bound already; the descriptor is closed here).
    Returns the reactor's port."""
    if inherited is not None:
        sock = adopted_socket(inherited, port)
    elif not shared:
        udp: IReactorUDP = reactor
        return udp.listenUDP(port, protocol, interface=interface, maxPacketSize=max_packet_size)
    else:
        sock = bind_socket(port, interface, shared=True)
    try:
        adopter: IReactorSocket = reactor
        return adopter.adoptDatagramPort(sock.fileno(), sock.family, protocol,
                                         maxPacketSize=max_packet_size)
    finally:
        sock.close()  # the reactor holds its own duplicate of the descriptor


def adopted_socket(fd: int, port: int) -> socket.socket:
    """The UDP socket on inherited descriptor ``fd``, which must be bound to ``port`` (0:
    any); raises ``CannotListenError`` otherwise (a descriptor that is not the group's)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise CannotListenError("", port, exc)
    bound = sock.getsockname()[1] if sock.type == socket.SOCK_DGRAM else None
    if bound is None or (port and bound != port):
        sock.close()
        raise CannotListenError("", port, OSError(
            "inherited descriptor %d is not a UDP socket bound to port %d" % (fd, port)))
    sock.setblocking(False)
    return sock


def port_free(port: int, interface: str) -> None:
    """Raise ``CannotListenError`` if UDP ``interface``:``port`` cannot be bound alone."""
    bind_socket(port, interface, shared=False).close()


class SocketGroup:
    """``count`` sockets bound to UDP ``interface``:``port`` with ``SO_REUSEPORT``, in order:
    the reuse-port group of the workers, held by the supervisor (see the module docstring).
    Port 0: the first socket's port, chosen by the system, for all."""

    def __init__(self, port: int, interface: str, count: int):
        self.sockets: List[socket.socket] = []
        try:
            for _ in range(count):
                sock = bind_socket(port, interface, shared=True)
                self.sockets.append(sock)
                port = sock.getsockname()[1]
        except CannotListenError:
            self.close()
            raise
        self.port = port

    def fileno(self, worker: int) -> int:
        """The descriptor of worker ``worker``'s socket (1..count)."""
        return self.sockets[worker - 1].fileno()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []


# the descriptors a worker gets its sockets on, and the variables that name them
COAP_FD, DTLS_FD = 3, 4
FD_ENV = {"coap": "COAPBRIDGE_COAP_FD", "dtls": "COAPBRIDGE_DTLS_FD"}


def inherited(environ: Mapping[str, str]) -> Dict[str, int]:
    """{"coap": fd, "dtls": fd}: the group's sockets a worker was started with (none when
    it was not started by a supervisor that holds them)."""
    return descriptors(environ, FD_ENV)


def descriptors(environ: Mapping[str, str], variables: Mapping[str, str]) -> Dict[str, int]:
    """{name: fd} of each of ``variables`` (name -> variable) set to a number in ``environ``
    (also ``bridge.edge.shared_tcp``'s)."""
    out = {}
    for name, variable in variables.items():
        text = environ.get(variable, "")
        if text.isdigit():
            out[name] = int(text)
    return out
