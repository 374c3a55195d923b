"""The supervisor's service with a made-up reactor: workers spawned with their number,
restarted after the policy's delay, given up on with their line, stopped with SIGTERM and
killed after STOP_TIMEOUT."""

from __future__ import annotations

import tempfile

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from bridge.settings import CoapConfig, Config, MetricsConfig
from bridge import supervisor
from bridge.supervisor import SupervisorService, WorkerProcess


class Transport:
    def __init__(self):
        self.signals = []

    def signalProcess(self, name):
        self.signals.append(name)


class Reactor(Clock):
    running = True

    def __init__(self):
        super().__init__()
        self.spawned = []  # (protocol, env, transport)
        self.child_fds = []  # each spawn's
        self.stopped = False

    def spawnProcess(self, protocol, executable, args, env, path, childFDs):
        transport = Transport()
        self.spawned.append((protocol, env, transport))
        self.child_fds.append(childFDs)
        return transport

    def stop(self):
        self.stopped = True


def service(workers=2):
    # its own DATA_DIR each: the supervisor holds it (bridge.edge.data_dir)
    config = Config(coap=CoapConfig(bind_address="127.0.0.1", bind_port=0, workers=workers),
                    metrics=MetricsConfig(port=0), data_dir=tempfile.mkdtemp())
    reactor = Reactor()
    svc = SupervisorService(config, reactor, ["python", "-c", "pass"], env={"PATH": "/bin"})
    svc.startService()
    return svc, reactor


def start(protocol, port=0):
    protocol.outReceived(b'{"log_format": "Worker started", "worker_event": "started", '
                         b'"metrics_port": %d}\n' % port)


def end(protocol, status=None, signal=None):
    if signal is None and status == 0:
        protocol.processEnded(Failure(ProcessDone(0)))
    else:
        protocol.processEnded(Failure(ProcessTerminated(status, signal)))


def test_each_worker_is_spawned_with_its_number_and_reports_its_metrics_port():
    svc, reactor = service()
    assert [env[supervisor.WORKER_ENV] for _, env, _ in reactor.spawned] == ["1", "2"]
    assert all(env["PATH"] == "/bin" for _, env, _ in reactor.spawned)
    assert svc.worker_ports() == {1: None, 2: None}
    start(reactor.spawned[0][0], 4711)
    assert svc.worker_ports() == {1: 4711, 2: None}


def test_a_worker_that_dies_is_respawned_after_the_backoff():
    svc, reactor = service()
    first = reactor.spawned[0][0]
    start(first)
    end(first, signal=9)
    assert len(reactor.spawned) == 2  # not yet
    reactor.advance(0.9)
    assert len(reactor.spawned) == 2
    reactor.advance(0.2)
    assert len(reactor.spawned) == 3 and reactor.spawned[2][1][supervisor.WORKER_ENV] == "1"
    assert svc.policy.restarts(1) == 1 and not reactor.stopped


def test_a_worker_refusing_to_start_stops_the_supervisor_with_its_line():
    svc, reactor = service()
    worker = reactor.spawned[1][0]
    worker.errReceived(b"some warning\ncoapbridge: cannot open /data/registry.sqlite3: "
                       b"Permission denied; DATA_DIR")
    worker.errReceived(b" (/data) must be writable\n")
    end(worker, status=2)
    assert reactor.stopped
    assert svc.failure == ("worker 2 cannot start: cannot open /data/registry.sqlite3: "
                           "Permission denied; DATA_DIR (/data) must be writable")


def test_a_configuration_refused_by_a_worker_is_given_as_one_line():
    protocol = WorkerProcess(supervisor=None, worker=1)
    protocol.errReceived(b"coapbridge: bridge.yaml has 2 problems:\n  - coap.bind_port: bad\n"
                         b"  - mqtt.port: bad\n")
    assert protocol.last_error() == ("coapbridge: bridge.yaml has 2 problems: - "
                                     "coap.bind_port: bad - mqtt.port: bad")


def test_stopping_sends_sigterm_then_kills_what_still_runs_after_the_timeout():
    svc, reactor = service()
    for protocol, _, _ in reactor.spawned:
        start(protocol)
    done = svc.stopService()
    assert [t.signals for _, _, t in reactor.spawned] == [["TERM"], ["TERM"]]
    end(reactor.spawned[0][0], signal=15)
    assert not done.called
    reactor.advance(supervisor.STOP_TIMEOUT)
    assert reactor.spawned[1][2].signals == ["TERM", "KILL"]
    end(reactor.spawned[1][0], signal=9)
    assert done.called
    reactor.advance(60)
    assert len(reactor.spawned) == 2  # nothing restarted while stopping


def test_a_restart_pending_at_stop_is_cancelled():
    svc, reactor = service()
    start(reactor.spawned[0][0])
    end(reactor.spawned[0][0], status=1)
    for protocol, _, _ in reactor.spawned[1:]:
        start(protocol)
    done = svc.stopService()
    end(reactor.spawned[1][0], signal=15)
    assert done.called
    reactor.advance(60)
    assert len(reactor.spawned) == 2


def test_each_worker_gets_its_socket_of_the_group_and_the_same_one_again_after_a_restart():
    import os
    import socket
    from bridge.edge import udp
    svc, reactor = service()
    try:
        group = svc.groups["coap"]
        assert len(group.sockets) == 2
        port = group.port
        assert port and all(s.getsockname()[1] == port for s in group.sockets)
        for n, (_, env, _) in enumerate(reactor.spawned, 1):
            assert env[udp.FD_ENV["coap"]] == str(udp.COAP_FD)
            assert udp.FD_ENV["dtls"] not in env  # DTLS is off
            assert reactor.child_fds[n - 1][udp.COAP_FD] == group.fileno(n)
        first = reactor.spawned[0][0]
        start(first)
        end(first, signal=9)
        reactor.advance(1.1)
        assert reactor.child_fds[2][udp.COAP_FD] == group.fileno(1)  # the same socket
        # the group still holds the port: nobody else can take it meanwhile
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
        held = list(group.sockets)
    finally:
        done = svc.stopService()
        for protocol, _, _ in reactor.spawned[1:]:
            end(protocol, signal=15)
    assert done.called and svc.groups == {}
    assert [sock.fileno() for sock in held] == [-1, -1]  # closed once the workers stopped


def test_a_worker_adopts_the_inherited_socket_and_refuses_a_descriptor_that_is_not_one():
    import os
    import socket
    from twisted.internet.error import CannotListenError
    from bridge.edge import udp
    group = udp.SocketGroup(0, "127.0.0.1", 1)
    try:
        fd = os.dup(group.fileno(1))
        sock = udp.adopted_socket(fd, group.port)
        assert sock.getsockname() == ("127.0.0.1", group.port)
        sock.close()
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.bind(("127.0.0.1", 0))
        try:
            wrong = os.dup(other.fileno())
            with pytest.raises(CannotListenError,
                               match="is not a UDP socket bound to port %d" % group.port):
                udp.adopted_socket(wrong, group.port)
        finally:
            other.close()
    finally:
        group.close()
    assert udp.inherited({"COAPBRIDGE_COAP_FD": "3", "COAPBRIDGE_DTLS_FD": "4"}) == {
        "coap": 3, "dtls": 4}
    assert udp.inherited({}) == {}
