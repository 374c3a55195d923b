"""Events into the core and actions out of it: frozen values, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, List, Optional, Tuple

from . import codes


@dataclass  # not frozen: built per request, and a frozen dataclass costs 3x to build
class Request:
    """A CoAP request as the core sees it. ``ref`` is the edge's handle for the answer."""

    ref: int
    method: int
    path: Tuple[str, ...]
    payload: bytes = b""
    query: Tuple[str, ...] = ()
    content_format: Optional[int] = None
    observe: Optional[int] = None
    token: bytes = b""
    remote: Hashable = None
    confirmable: bool = True
    block2: Optional[Tuple[int, int]] = None  # Block2 asked: (block number, block size)


@dataclass(frozen=True)
class Device:
    """A registered device: the platform knows it by ``name`` with profile ``type``."""

    name: str
    type: str


@dataclass  # not frozen: built per request, and a frozen dataclass costs 3x to build
class Reply:
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


@dataclass  # not frozen: built per request, and a frozen dataclass costs 3x to build
class Publish:
    """Publish ``payload`` on ``topic`` at QoS 1; the edge reports the PUBACK for ``ref``."""

    ref: int
    topic: str
    payload: bytes
    device: str = ""


@dataclass(frozen=True)
class Notify:
    """Send an observe notification; the edge reports ACK, RST or timeout for CON ones."""

    ref: int
    remote: Hashable
    token: bytes
    confirmable: bool
    code: int
    payload: bytes
    observe: int
    device: str = ""
    block_size: int = codes.BLOCK_SIZE  # a longer payload goes block by block (RFC 7959 §2.6)


@dataclass(frozen=True)
class RenameDevice:
    """The platform renamed a device: update the registry."""

    old: str
    new: str


@dataclass(frozen=True)
class DeleteDevice:
    """The platform deleted a device: its token must get 4.01 from now on."""

    name: str


@dataclass(frozen=True)
class Log:
    """Something the operator should know; the edge logs it at ``level``."""

    level: str
    text: str
    device: str = ""
    error: Optional[BaseException] = None  # a bug: the edge logs its traceback


@dataclass  # not frozen: built per request, and a frozen dataclass costs 3x to build
class Store:
    """Write an uplink durably; the edge reports the outbox id with ``on_stored``.

    Until then the core may rename it (the platform renamed the device): the edge
    writes ``device`` and ``payload`` as they are when the write begins."""

    ref: int
    device: str
    device_type: str
    topic: str
    payload: bytes


# One plain uplink of a turn, as the edge hands it to ``on_uplinks``: request ref,
# access token, feature ("telemetry" or "attributes"), payload, source (host, port).
Uplink = Tuple[int, str, str, bytes, Hashable]

# An uplink to write: device, device type, topic, payload.
Row = Tuple[str, str, str, bytes]


@dataclass
class StoreMany:
    """Write ``rows`` durably, in order, under consecutive outbox ids; the edge reports the
    first id with ``on_stored``. Until then the core may rename rows (see ``Store``)."""

    ref: int
    rows: List[Row]


@dataclass
class Created:
    """Answer requests ``refs`` 2.01 Created: their uplinks are stored."""

    refs: List[int]


@dataclass(frozen=True)
class Delete:
    """The broker acknowledged the outbox entries ``ids`` (one publish): remove them."""

    ids: Tuple[int, ...]
    # when each was answered 2.01, for the delivery histogram (not part of what is deleted)
    created: Tuple[float, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class DeadLetter:
    """The platform refused outbox entry ``id`` for good: keep it aside with the reason."""

    id: int
    reason: str


@dataclass(frozen=True)
class LoadBacklog:
    """Read the next outbox entries after id ``after`` (in id order, at most ``rows`` of
    them or about ``size`` payload bytes) and hand them to ``on_restored``."""

    after: int
    rows: int
    size: int


@dataclass(frozen=True)
class ResetLink:
    """Drop and re-establish the broker connection (a PUBACK is overdue)."""

    reason: str


@dataclass(frozen=True)
class Provision:
    """Provision a device (locally or through the platform) and answer request ``ref``."""

    ref: int
    request: Any  # core.provision.ProvisionRequest


@dataclass(frozen=True)
class ServePackage:
    """Answer request ``ref`` with package bytes: all of it, or ``length`` bytes at ``offset``."""

    ref: int
    device: str
    token: str
    package: Any  # core.ota.PackageInfo
    offset: int = 0
    length: Optional[int] = None


@dataclass(frozen=True)
class Authenticated:
    """Request ``ref`` carried a valid credential: its answers, now and later, need no
    amplification limit (RFC 7252 §11.3). Comes before the request's other actions."""

    __slots__ = ("ref",)
    ref: int
