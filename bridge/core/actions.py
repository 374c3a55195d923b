"""Events into the core and actions out of it: immutable values, no behaviour.

Those built per request or per uplink (``Request``, ``Reply``, ``Publish``, the uplink
record ``Entry`` and the ``Store``/``StoreMany``/``Created``/``Delete`` around it) are
NamedTuples: immutable, and cheap to build (a frozen dataclass costs about three times
as much); ``_typed`` makes each equal only to values of its own type. The others are
frozen dataclasses with slots. The core never changes an action once it is emitted: what
it must keep changing (uplinks being written, renamed) it keeps as its own copy."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from typing import Any, Hashable, Mapping, NamedTuple, Optional, Tuple, TypeVar

from . import codes

T = TypeVar("T")


def _frozen(cls: Any) -> Any:
    """A frozen dataclass with slots. ``dataclass(slots=True)`` needs Python 3.10; on 3.9
    (PyPy 3.9 among them) the class is rebuilt with ``__slots__`` the same way: the fields
    become slots, their defaults live on in the generated ``__init__``."""
    if sys.version_info >= (3, 10):
        return dataclass(frozen=True, slots=True)(cls)  # type: ignore[call-overload]
    cls = dataclass(frozen=True)(cls)
    names = tuple(f.name for f in fields(cls))
    body = {key: value for key, value in cls.__dict__.items()
            if key not in names and key not in ("__dict__", "__weakref__")}
    body["__slots__"] = names
    slotted = type(cls)(cls.__name__, cls.__bases__, body)
    slotted.__qualname__ = cls.__qualname__
    return slotted


def _typed(cls: T) -> T:
    """Make a NamedTuple equal only to values of its own type: a plain one equals any tuple
    of the same items (``Delete((1,)) == Created((1,))``), which would let a test comparing
    actions pass with the wrong action. Only equality changes; building costs the same."""
    def __eq__(self: tuple, other: object) -> bool:
        return type(other) is type(self) and tuple.__eq__(self, other)  # type: ignore[operator]

    def __ne__(self: tuple, other: object) -> bool:
        return not __eq__(self, other)
    cls.__eq__ = __eq__  # type: ignore[attr-defined]
    cls.__ne__ = __ne__  # type: ignore[attr-defined]
    cls.__hash__ = tuple.__hash__  # type: ignore[attr-defined]
    return cls


@_typed
class Request(NamedTuple):
    """A CoAP request as the core sees it. ``ref`` is the edge's handle for the answer."""

    ref: int
    method: int
    path: Tuple[str, ...]
    payload: bytes = b""
    query: Tuple[str, ...] = ()
    observe: Optional[int] = None
    token: bytes = b""
    remote: Hashable = None
    # Block2 asked: (block number, block size; for a BERT block, RFC 8323 §6, ``room``)
    block2: Optional[Tuple[int, int]] = None
    # what the DTLS session verified (core.auth.Certificate or PresharedKey), or None:
    # plain UDP, or DTLS without a client credential (the token in the path decides)
    credential: Any = None
    # an observe registration's state in the transport (opaque here: the relation keeps it
    # and hands it back with each Notify; the transport chooses CON or NON with it)
    observation: Any = None
    # the most payload one answer carries to this remote: a block (1024 bytes) over UDP and
    # DTLS; on a reliable connection what the smaller Max-Message-Size takes
    room: int = codes.BLOCK_SIZE


@_frozen
class PowerSettings:
    """A power-saving mode and its timers in ms (ThingsBoard's ``PowerSavingConfiguration``):
    a device type's (its profile's ``clientSettings``) or a device's own (the registry's);
    None or 0: not given (the device's own falls back to its type's, that to the defaults)."""

    mode: Optional[str] = None  # PSM, DRX or E_DRX
    psm_activity_timer: Optional[int] = None
    edrx_cycle: Optional[int] = None
    paging_transmission_window: Optional[int] = None

    def given(self) -> bool:
        return any(value is not None for value in (self.mode, self.psm_activity_timer,
                                                   self.edrx_cycle,
                                                   self.paging_transmission_window))


@_frozen
class Device:
    """A registered device: the platform knows it by ``name`` with profile ``type``;
    ``power``: its own power-saving settings (None: its type's)."""

    name: str
    type: str
    power: Optional[PowerSettings] = None


@_typed
class Reply(NamedTuple):
    """Answer request ``ref`` with ``code``; ``reason`` is for logs and diagnostics."""

    ref: int
    code: int
    payload: bytes = b""
    content_format: Optional[int] = None
    max_age: Optional[int] = None
    size1: Optional[int] = None
    reason: str = ""
    observe: Optional[int] = None
    authenticated: bool = False  # the request carried a valid access token
    quiet: bool = False  # no answer to a NON request (RFC 7967's No-Response: Efento's)


@_typed
class Publish(NamedTuple):
    """Publish ``payload`` on ``topic`` at QoS 1; the edge reports the PUBACK for ``ref``."""

    ref: int
    topic: str
    payload: bytes
    device: str = ""


@_frozen
class Notify:
    """Send an observe notification to a relation; the transport chooses CON or NON (with
    ``observation``, the relation's state from its registration) and reports its fate
    (ack, delivered, reset or timeout, ``GatewayCore.on_notified``)."""

    ref: int
    remote: Hashable
    token: bytes
    code: int
    payload: bytes
    observe: int
    device: str = ""
    block_size: int = codes.BLOCK_SIZE  # a longer payload goes block by block (RFC 7959 §2.6)
    content_format: int = codes.APPLICATION_JSON
    observation: Any = None


@_frozen
class Withdraw:
    """Stop retransmitting CON notification ``ref`` to ``remote``: its device fell asleep
    (PSM). If the transport stops it, its outcome is "withdrawn" (``on_notified``) and the
    core sends it again when the device wakes; if it cannot (its fate came, or it was
    written to a reliable connection), the outcome it has stands."""

    ref: int
    remote: Hashable = None


@_frozen
class RenameDevice:
    """The platform renamed a device: update the registry."""

    old: str
    new: str


@_frozen
class DeleteDevice:
    """The platform deleted a device: its token must get 4.01 from now on."""

    name: str


@_frozen
class Log:
    """Something the operator should know: the edge logs ``format`` (twisted.logger's
    PEP 3101 format, its fields by name) with ``fields`` at ``level``. Field names are
    stable, the same for the same thing everywhere: ``device``, ``peer``, ``topic``,
    ``count``, ``reason``, ``id`` (an outbox entry), ``rpc_id``, ``reason_code`` (a PUBACK's)."""

    level: str
    format: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    error: Optional[BaseException] = None  # a bug: the edge logs its traceback


@_typed
class Entry(NamedTuple):
    """One uplink, the one record of it from admission through the outbox to delivery.

    The core builds it when it admits the uplink (``id`` 0: not stored yet), the edge
    writes it as it is and gives it its outbox ``id``, and the core delivers its own
    copy with that id (``on_stored``); read back from the outbox, it comes with its id."""

    id: int
    device: str
    device_type: str
    topic: str
    payload: bytes
    created: float  # when it was admitted: the turn its device is answered 2.01 in


@_typed
class Store(NamedTuple):
    """Write an uplink durably; the edge reports the outbox id with ``on_stored``."""

    ref: int
    entry: Entry


# One plain uplink of a turn, as the edge hands it to ``on_uplinks``: request ref,
# access token (or, for the token-less form over DTLS, the session's credential: a
# core.auth.Certificate or PresharedKey), feature ("telemetry" or "attributes"),
# payload, source (host, port, or a DTLS session).
Uplink = Tuple[int, Any, str, bytes, Hashable]


@_typed
class StoreMany(NamedTuple):
    """Write ``entries`` durably, in order, under consecutive outbox ids; the edge reports
    the first id with ``on_stored``."""

    ref: int
    entries: Tuple[Entry, ...]


@_typed
class Created(NamedTuple):
    """Answer requests ``refs`` 2.01 Created: their uplinks are stored."""

    refs: Tuple[int, ...]


class Delete(NamedTuple):
    """The broker acknowledged the outbox entries ``ids`` (one publish): remove them.

    ``created``: when each was admitted (answered 2.01), for the delivery-time histogram;
    not part of what is deleted, so two Deletes of the same ids are equal."""

    ids: Tuple[int, ...]
    created: Tuple[float, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is Delete and self.ids == other.ids  # type: ignore[attr-defined]

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(self.ids)


@_frozen
class DeadLetter:
    """The platform refused outbox entry ``id`` for good: keep it aside with the reason."""

    id: int
    reason: str


@_frozen
class LoadBacklog:
    """Read the next outbox entries after id ``after`` (in id order, at most ``rows`` of
    them or about ``size`` payload bytes) and hand them to ``on_restored``."""

    after: int
    rows: int
    size: int


@_frozen
class ResetLink:
    """Drop and re-establish the broker connection (a PUBACK is overdue)."""

    reason: str


@_frozen
class Provision:
    """Provision a device (locally or through the platform) and answer request ``ref``."""

    ref: int
    request: Any  # core.provision.ProvisionRequest


@_frozen
class ServePackage:
    """Answer request ``ref`` with package bytes: all of it, or ``length`` bytes at ``offset``."""

    ref: int
    device: str
    token: Optional[str]  # the device's access token; None: none known (directory source)
    package: Any  # core.ota.PackageInfo
    offset: int = 0
    length: Optional[int] = None


@_typed
class Authenticated(NamedTuple):
    """Request ``ref`` carried a valid credential: its answers, now and later, need no
    amplification limit (RFC 7252 §11.3). Comes before the request's other actions."""

    ref: int
