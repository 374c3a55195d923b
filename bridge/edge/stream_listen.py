"""A stream listener as Twisted's ``StreamServerEndpointService``, bound before the next
service starts.

``StreamServerEndpointService`` listens when it starts; by default a failure to listen is
only logged, and the service tree goes on starting. A port in use must instead stop the
start with one line (a ``StartupError`` before CoAP opens), so ``listening`` sets
``_raiseSynchronously``, as ``twisted.application.strports.service`` does for twistd's
own listeners, and the endpoint's ``CannotListenError`` is raised from ``startService``.
TCP endpoints and ``AdoptedStreamServerEndpoint`` answer at once, so the port is bound
when ``listening`` returns; ``announce`` hears it (to log its address).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer


class _Announced:
    """An ``IStreamServerEndpoint`` around another whose port, once listening, goes to
    ``announce``."""

    def __init__(self, endpoint: Any, announce: Callable[[Any], None]):
        self.endpoint = endpoint
        self.announce = announce

    def listen(self, factory: Any) -> defer.Deferred:
        def listening(port: Any) -> Any:
            self.announce(port)
            return port
        return self.endpoint.listen(factory).addCallback(listening)


def listening(endpoint: Any, factory: Any,
              announce: Callable[[Any], None]) -> StreamServerEndpointService:
    """A started ``StreamServerEndpointService`` of ``factory`` on ``endpoint``; raises the
    endpoint's failure (``CannotListenError``...) instead of logging it."""
    service = StreamServerEndpointService(_Announced(endpoint, announce), factory)
    service._raiseSynchronously = True  # the failure raised from startService
    service.startService()
    return service
