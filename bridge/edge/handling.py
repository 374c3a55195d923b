"""A request handed to the request handler and its answer back: the one piece every CoAP
transport driver shares (``edge.coap``'s, for UDP and DTLS, and ``edge.stream``'s, for
TCP, TLS and WebSockets).

The handler (``glue.coap_requests.CoapRequests.handle``) returns a ``Message``, an
``Answer`` or a Deferred firing with one; the driver's ``_respond(result, incoming)``
sends it its transport's way. A driver with ``callback_handler`` set calls it as
``handler(incoming, respond)`` instead: the handler answers by calling
``respond(answer, incoming)`` once, now or later, and returns None (no Deferred per
request), or returns its answer as a plain handler does. W6 (../shared/spec/txthings-notes.md): a handler that
raises, or a Deferred that fails, is logged once with its traceback and answered 5.00,
so the device always hears back and no Failure is left unhandled.
"""

from __future__ import annotations

from typing import Any, Callable, Union

from twisted.internet import defer
from twisted.python.failure import Failure

from ..coap.exchange import Answer, Incoming
from ..coap.message import Message, make_response
from ..coap.peers import describe
from ..core import codes
from ..logs import logger

log = logger("coap")

Handler = Callable[..., Union[None, defer.Deferred, Message, Answer]]
INTERNAL_ERROR = Answer(make_response(codes.INTERNAL_SERVER_ERROR, b"internal error",
                                      codes.TEXT_PLAIN))


def not_an_answer(result: Any) -> TypeError:
    """What a driver raises for a handler's result that is neither ``Message`` nor
    ``Answer`` (a bug: the Deferred's errback answers 5.00)."""
    return TypeError("request handler returned %r, not a Message" % (type(result),))


class Handling:
    """Mixed into a driver with a ``handler`` and a ``_respond(result, incoming)``."""

    __slots__ = ()
    handler: Handler
    callback_handler = False  # handler(incoming, respond): see the module

    def _respond(self, result: Any, incoming: Incoming) -> None:
        raise NotImplementedError

    def _dispatch(self, incoming: Incoming) -> None:
        """Hand ``incoming`` to the handler; its answer, now or later, to ``_respond``."""
        try:
            if self.callback_handler:
                result = self.handler(incoming, self._answered)
                if result is None:  # it calls _answered
                    return
            else:
                result = self.handler(incoming)
        except Exception:
            log.failure("Request handler raised for {peer}", peer=describe(incoming.peer))
            self._respond(INTERNAL_ERROR, incoming)
            return
        if isinstance(result, defer.Deferred):
            result.addCallback(self._respond, incoming)
            result.addErrback(self._failed, incoming)
        else:
            self._respond(result, incoming)

    def _answered(self, result: Any, incoming: Incoming) -> None:
        """A callback handler's answer (W6: one that cannot be sent is a 5.00)."""
        try:
            self._respond(result, incoming)
        except Exception:
            self._failed(Failure(), incoming)

    def _failed(self, failure: Any, incoming: Incoming) -> None:
        log.failure("Request handling failed for {peer}", failure=failure,
                    peer=describe(incoming.peer))
        self._respond(INTERNAL_ERROR, incoming)
