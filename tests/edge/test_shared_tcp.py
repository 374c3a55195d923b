"""bridge/edge/shared_tcp.py: the supervisor's listening sockets and a worker's adoption of
them, on the real reactor's interface (a MemoryReactor records the adoption)."""

from __future__ import annotations

import os
import socket

import pytest
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from bridge.edge import shared_tcp


def test_bind_listening_listens_and_a_taken_port_is_cannot_listen():
    sock = shared_tcp.bind_listening(0, "127.0.0.1")
    try:
        port = sock.getsockname()[1]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the kernel completes it into the queue: listening
        with pytest.raises(CannotListenError):
            shared_tcp.bind_listening(port, "127.0.0.1")
    finally:
        sock.close()


class AdoptingReactor(MemoryReactor):
    def adoptStreamPort(self, fd, family, factory):
        self.adopted = (os.fstat(fd).st_ino, family, factory)
        return "port"


def test_the_endpoint_hands_the_listening_socket_to_the_reactor_and_closes_the_inherited_fd():
    sock = shared_tcp.bind_listening(0, "127.0.0.1")
    try:
        fd, port = os.dup(sock.fileno()), sock.getsockname()[1]
        inode = os.fstat(sock.fileno()).st_ino
        reactor, factory = AdoptingReactor(), Factory()
        endpoint = shared_tcp.endpoint(reactor, fd, port)
        assert isinstance(endpoint, AdoptedStreamServerEndpoint)  # Twisted's own
        os.fstat(fd)  # still open until it listens
        listened = []
        endpoint.listen(factory).addCallback(listened.append)
        assert listened == ["port"]
        assert reactor.adopted == (inode, socket.AF_INET, factory)
        with pytest.raises(OSError):
            os.fstat(fd)  # closed: the reactor keeps a duplicate of its own
    finally:
        sock.close()


@pytest.mark.parametrize("kind", ["udp", "unlistened", "other port"])
def test_the_endpoint_refuses_a_descriptor_that_is_not_the_listener(kind):
    if kind == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
    elif kind == "unlistened":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
    else:
        sock = shared_tcp.bind_listening(0, "127.0.0.1")
    port = sock.getsockname()[1] + (1 if kind == "other port" else 0)
    fd = os.dup(sock.fileno())
    try:
        with pytest.raises(CannotListenError, match="not a TCP socket listening on port %d"
                           % port):
            shared_tcp.endpoint(AdoptingReactor(), fd, port)
        with pytest.raises(OSError):
            os.fstat(fd)  # closed: nothing else will
    finally:
        sock.close()


def test_inherited_reads_the_supervisors_variables_only():
    env = {"COAPBRIDGE_TCP_FD": "5", "COAPBRIDGE_WSS_FD": "8", "COAPBRIDGE_TLS_FD": "",
           "COAPBRIDGE_WS_FD": "x"}
    assert shared_tcp.inherited(env) == {"tcp": 5, "wss": 8}
