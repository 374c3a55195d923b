"""Baseline CoAP servers for the benchmark: each answers every POST with 2.01 and does no work.

Both run with the bridge's garbage-collector settings (bridge/runtime.py), so the
ratios compare code, not runtime settings.

    python bench/servers.py stock  PORT   # txThings 0.3.0 as shipped (the engine's ceiling)
    python bench/servers.py engine PORT   # coapbridge's own CoAP engine (bridge/coap, edge/coap.py)
"""

from __future__ import annotations

import sys


def stock(port: int) -> None:
    import txthings.coap as coap
    import txthings.resource as resource
    from twisted.internet import defer, reactor

    class Sink(resource.CoAPResource):
        isLeaf = True

        def render_POST(self, request):  # noqa: N802 (txThings API)
            return defer.succeed(coap.Message(code=coap.CREATED))

        def render_GET(self, request):  # noqa: N802
            return defer.succeed(coap.Message(code=coap.CONTENT, payload=b"{}"))

    root = resource.CoAPResource()
    root.isLeaf = True
    root.render_POST = Sink().render_POST
    root.render_GET = Sink().render_GET
    reactor.listenUDP(port, coap.Coap(resource.Endpoint(root)), interface="127.0.0.1")
    print("ready", flush=True)
    _run(reactor)


def engine(port: int) -> None:
    from twisted.internet import defer, reactor

    from bridge.coap.message import make_response
    from bridge.core import codes
    from bridge.edge import coap as edge

    created = lambda request: defer.succeed(make_response(codes.CREATED))  # noqa: E731
    protocol = edge.create_protocol(created, reactor, 0.5, 247.0)
    edge.listen(reactor, protocol, port, "127.0.0.1")
    print("ready", flush=True)
    _run(reactor)


def _run(reactor) -> None:
    from bridge import runtime
    if runtime.tune_gc():
        reactor.callWhenRunning(runtime.freeze_startup_objects)
    reactor.run()


if __name__ == "__main__":
    {"stock": stock, "engine": engine}[sys.argv[1]](int(sys.argv[2]))
