"""The CoAP request adapter: a transport's ``Incoming`` request -> the core, the core's answer
-> the transport.

``CoapRequests.handle`` is the CoAP transport's request handler. It refuses a
request 5.03 beyond the pending bounds (``admission``), keeps a plain uplink
(``routes.plain_uplink``: the bulk of the traffic) for the end of the reactor
turn, when ``flush_uplinks`` hands the turn's uplinks to the core at once, and
turns any other request into the core's ``Request`` at once (the kept uplinks
go first, so the core sees requests in the order they came). A request over a DTLS
session carries the session's credential (``peer.credential``: a certificate or PSK
identity, or None) into the core's ``Request``; its plain uplinks in the token-less form
(``routes.session_uplink``) are kept for the turn's bulk with the credential in place of
the token, and one with a token in its path takes the second way (the core checks the
token against the credential). An unknown certificate may be registered first
(``register``: X.509 auto-registration). Each request in
progress is a ``Pending`` tuple under its ref until ``answer`` gives its
``Answer`` to the transport: through the ``respond(answer, incoming)`` callable the
transport handed in with the request (``handle(incoming, respond)``, what the UDP edge
does: no Deferred per request), or, called as ``handle(incoming)``, by firing the
Deferred it returned. Each answer is counted by route, code and transport
(``request_counts``: the record holds its cell).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Hashable, List, Optional, Set, Tuple, Union

from twisted.internet import defer

from ..coap.exchange import Answer, Incoming
from ..coap.message import Message, make_response
from ..coap.options import BERT, URI_PATH
from ..coap.peers import describe
from ..core import codes
from ..core.actions import Authenticated, Created, Reply, Request, Uplink
from ..core.routes import metric_route, plain_uplink, session_uplink
from ..logs import logger
from .admission import PendingAdmission
from .lookup import RegistryView
from .request_counts import RequestCounts

log = logger("bridge")

Apply = Callable[[List[Any]], None]
Respond = Callable[[Answer, Any], None]  # (the answer, the transport's argument)
CREATED = make_response(codes.CREATED)  # immutable: one for every uplink
CREATED_ANSWER = Answer(CREATED, True)  # a stored uplink carried a valid token


def _fire(answer: Answer, deferred: defer.Deferred) -> None:
    """``respond`` for a caller that asked for a Deferred."""
    deferred.callback(answer)


# A request the core has not answered yet: (respond, arg, peer, started, counts), a plain
# tuple (made and read once per request: no class to build or attributes to look up):
# ``respond(answer, arg)`` once; ``peer`` holds a slot of ``admission``; ``started``, when it
# came (the clock's seconds); ``counts``, its answer's count by code (its route and
# transport's). Whether it carried a valid access token: its ref in ``authenticated_refs``.
Pending = Tuple[Respond, Any, Hashable, float, List[int]]


class CoapRequests:
    def __init__(self, core: Any, clock: Any, admission: PendingAdmission, registry: RegistryView,
                 apply: Apply, schedule_commit: Callable[[], None],
                 register: Optional[Callable[[Any], Optional[defer.Deferred]]] = None):
        self.core = core
        # credential -> None, or a Deferred while it is being registered (auto-registration)
        self.register = register
        self.clock = clock
        self.admission = admission
        self.registry = registry
        self.apply = apply
        self.schedule_commit = schedule_commit  # the end of the turn flushes the uplinks
        self.in_progress: Dict[int, Pending] = {}
        self.authenticated_refs: Set[int] = set()  # of requests in progress (``Authenticated``)
        self.uplinks: List[Uplink] = []  # plain uplinks of this turn, for the core in one go
        self.handled = 0  # requests so far: the last request's ref
        self.counts = RequestCounts()  # answers by route, code and transport
        # (feature, peer class) -> its count by code, for plain uplinks: no call per uplink
        self._uplink_cells: Dict[Tuple[str, type], List[int]] = {}
        # seconds from a request to its answer, for the metrics (a histogram's observe)
        self.answered: Callable[[float], None] = lambda seconds: None

    def handle(self, incoming: Incoming,
               respond: Optional[Respond] = None) -> Optional[defer.Deferred]:
        """Take a request: its ``Answer`` goes to ``respond(answer, incoming)`` (now or
        later, once); without ``respond``, a Deferred is returned that fires with it."""
        if respond is None:
            deferred: Optional[defer.Deferred] = defer.Deferred()
            respond, arg = _fire, deferred
        else:
            deferred, arg = None, incoming
        self.handled += 1
        ref = self.handled  # the request's ref: the number of requests so far
        peer = incoming.peer
        if type(peer) is tuple:  # a UDP source (host, port): no credential
            self._admit(ref, incoming, peer, None, respond, arg)
            return deferred
        credential = getattr(peer, "credential", None)  # a DTLS session's, or None
        if credential is not None and self.register is not None:
            self.registry.refresh()  # the copy the core reads, up to date for this turn
            registering = self.register(credential)
            if registering is not None:  # a registry write in progress: the request waits
                registering.addCallback(
                    lambda _: self._admit(ref, incoming, peer, credential, respond, arg))
                registering.addErrback(self._failed_later, respond, arg, peer)
                return deferred
        self._admit(ref, incoming, peer, credential, respond, arg)
        return deferred

    def _failed_later(self, failure: Any, respond: Respond, arg: Any, peer: Any) -> None:
        """A request that waited for a registration failed where nothing else catches it."""
        log.failure("Handling a request from {peer} failed", failure=failure,
                    peer=describe(peer))
        self.counts.cell("other", peer).codes[codes.INTERNAL_SERVER_ERROR] += 1
        respond(Answer(make_response(codes.INTERNAL_SERVER_ERROR, b"internal error",
                                     codes.TEXT_PLAIN)), arg)

    def _admit(self, ref: int, incoming: Incoming, peer: Any, credential: Any,
               respond: Respond, arg: Any) -> None:
        refused = self.admission.take(peer)  # None: held until answered
        message = incoming.message
        options = message.options
        if len(options) > 3 and options[0][0] == URI_PATH and options[3][0] == URI_PATH \
                and (len(options) == 4 or options[4][0] != URI_PATH):
            # four Uri-Path segments first (the options are in order): a plain uplink's
            path: Tuple[bytes, ...] = (options[0][1], options[1][1], options[2][1],
                                       options[3][1])
        else:
            path = message.uri_path
        if refused is not None:
            self._count(message, path, peer, codes.SERVICE_UNAVAILABLE)
            respond(Answer(make_response(codes.SERVICE_UNAVAILABLE, refused, codes.TEXT_PLAIN,
                                         max_age=1)), arg)
            return
        if path:
            plain: Optional[tuple] = None
            if credential is None:
                if len(path) == 4:  # the only length a plain uplink has
                    plain = plain_uplink(message.code, path)
            elif len(path) == 3:  # the token-less form, over a session that verified one
                feature = session_uplink(message.code, path)
                plain = (credential, feature) if feature is not None else None
            if plain is not None:  # the common upload goes to the core with the others
                token, feature = plain
                key = (feature, type(peer))
                cell = self._uplink_cells.get(key)
                if cell is None:
                    cell = self.counts.cell(feature, peer).codes
                    if self.counts.static(type(peer)):
                        self._uplink_cells[key] = cell
                self.in_progress[ref] = (respond, arg, peer, self.clock.seconds(), cell)
                uplinks = self.uplinks
                if not uplinks:  # the turn's first: the commit that flushes them, once
                    self.schedule_commit()
                uplinks.append((ref, token, feature, message.payload, peer))
                return
        self._request(ref, path, incoming, credential, respond, arg)

    def _request(self, ref: int, path: Any, incoming: Incoming, credential: Any,
                 respond: Respond, arg: Any) -> None:
        message = incoming.message
        peer = incoming.peer
        try:
            query = message.uri_query
            block2 = message.block2
            room = getattr(peer, "room", codes.BLOCK_SIZE)  # a reliable connection's
            request = Request(
                ref, message.code,
                tuple([segment.decode() for segment in path]),  # UTF-8, strict
                message.payload,
                tuple([item.decode() for item in query]),
                message.observe, message.token, peer,
                None if block2 is None else
                (block2.number, block2.size if block2.szx != BERT else room),
                credential, incoming.observation, room)
        except UnicodeDecodeError:
            self.admission.release(peer)
            self.counts.cell("other", peer).codes[codes.BAD_REQUEST] += 1
            respond(Answer(make_response(codes.BAD_REQUEST, b"Uri-Path and Uri-Query must be "
                                         b"UTF-8", codes.TEXT_PLAIN)), arg)
            return
        except Exception:  # a bug, answered 5.00 by the transport: what it holds is released
            self.admission.release(peer)
            raise
        self.in_progress[ref] = (
            respond, arg, peer, self.clock.seconds(),
            self.counts.cell(metric_route(message.code, request.path), peer).codes)
        if self.uplinks:
            self.flush_uplinks()  # the core sees requests in the order they came
        self.registry.refresh()  # the copy the core reads, up to date for this turn
        try:
            actions = self.core.on_request(request, self.clock.seconds())
        except Exception:
            # a bug, answered 5.00 by the transport: release what this request holds
            self.admission.release(self.in_progress.pop(ref)[2])
            self.authenticated_refs.discard(ref)
            raise
        self.apply(actions)

    def flush_uplinks(self) -> None:
        """Hand this turn's plain uplinks to the core (before the outbox is written)."""
        uplinks, self.uplinks = self.uplinks, []
        self.registry.refresh()  # the copy the core reads, up to date for this turn
        try:
            actions = self.core.on_uplinks(uplinks, self.clock.seconds())
        except Exception:
            # a bug outside any one uplink (the core answers one that fails 5.00 itself):
            # answered 5.00 like a failing request handler, and logged once
            log.failure("Handling {count:plural:uplink} failed", count=len(uplinks))
            for uplink in uplinks:
                self.answer(uplink[0], make_response(
                    codes.INTERNAL_SERVER_ERROR, b"internal error", codes.TEXT_PLAIN))
            return
        self.apply(actions)

    def _count(self, message: Message, path: Any, peer: Any, code: int) -> None:
        """An answer given before the request was read (refused at admission)."""
        try:
            segments = tuple([segment.decode() for segment in path]) if path else ()
        except UnicodeDecodeError:
            segments = ()
        self.counts.cell(metric_route(message.code, segments), peer).codes[code] += 1

    # -- answers -----------------------------------------------------------------------

    def authenticated(self, action: Authenticated) -> None:
        """The core found the request's credential valid: no amplification limit."""
        if action.ref in self.in_progress:
            self.authenticated_refs.add(action.ref)

    def reply(self, reply: Reply) -> None:
        # A device's bad request is its problem, and logging each one would let any
        # device flood the log: per-request answers are debug; states worth an operator's
        # attention (outbox full, platform refusals) arrive as Log actions from the core.
        if reply.code >= codes.BAD_REQUEST:
            pending = self.in_progress.get(reply.ref)
            log.debug("Answered {code} to {peer}: {reason}", code=codes.dotted(reply.code),
                      peer=describe(pending[2]) if pending is not None else "device",
                      reason=reply.reason)
        message = make_response(reply.code, reply.payload, reply.content_format,
                                reply.max_age, reply.size1, reply.observe)
        if reply.quiet:  # a NON request gets no answer (Efento's): the transport sees to it
            self.answer(reply.ref, Answer(message, reply.authenticated, quiet=True))
            return
        self.answer(reply.ref, message, reply.authenticated)

    def created(self, action: Created) -> None:
        """The 2.01s of a stored turn: ``answer`` for each, in one loop."""
        in_progress, release, answered = self.in_progress, self.admission.release, \
            self.answered
        now = self.clock.seconds()
        for ref in action.refs:
            pending = in_progress.pop(ref, None)
            if pending is not None:
                respond, arg, peer, started, counts = pending
                counts[codes.CREATED] += 1
                release(peer)
                answered(now - started)
                respond(CREATED_ANSWER, arg)
        if self.authenticated_refs:
            self.authenticated_refs.difference_update(action.refs)

    def answer_json(self, ref: int, code: int, body: bytes,
                    max_age: Optional[int] = None,
                    content_format: int = codes.APPLICATION_JSON) -> None:
        """Answer ``ref`` with ``body`` (JSON unless ``content_format`` says otherwise)."""
        self.answer(ref, make_response(code, body, content_format if body else None,
                                       max_age))

    def answer(self, ref: int, message: Union[Message, Answer],
               authenticated: bool = False) -> None:
        """Send the answer to request ``ref`` (once); ``authenticated``: the request carried
        a valid access token (also known if the core looked it up in ``on_request``)."""
        pending = self.in_progress.pop(ref, None)
        if pending is None:
            return
        respond, arg, peer, started, counts = pending
        if self.authenticated_refs and ref in self.authenticated_refs:
            self.authenticated_refs.discard(ref)
            authenticated = True
        if type(message) is Answer:
            if authenticated and not message.authenticated:
                message = message._replace(authenticated=True)
        else:  # large answers to a valid token need no amplification limit
            message = Answer(message, authenticated)  # type: ignore[arg-type]
        counts[message.message.code] += 1
        self.admission.release(peer)
        self.answered(self.clock.seconds() - started)
        respond(message, arg)
