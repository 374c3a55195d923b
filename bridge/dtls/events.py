"""What the DTLS server (``bridge.dtls.server``) tells its driver: immutable values.

A session is known to everyone above the server by its ``DtlsPeer``: a small frozen
value (address, serial, credential) that is hashable, equal only to itself, and printable
for logs (``dtls:HOST:PORT``). It does not send anything: the driver hands it back to
``DtlsServer.send`` with the plaintext. It is made once, when the handshake finishes,
so it carries the verified credential; the CoAP layer uses it as the peer of its
messages (``key`` is the string its deduplication keys on, ``address`` the source its
limits count per address, ``credential`` what the request adapter authenticates).

``Plaintext`` is built per record, so it is a NamedTuple (cheap, and equal only to its
own type, like the core's per-request values); the others are frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Tuple

Address = Tuple[str, int]

# HandshakeFailed.outcome
FAILED = "failed"  # an alert sent or received, a refused certificate
TIMED_OUT = "timed out"  # not finished by dtls.handshake_timeout (a wrong PSK ends so)

# HandshakeFailed.method: what the client authenticated with, as far as it got
PSK, X509, UNKNOWN = "psk", "x509", "unknown"


class DtlsPeer:
    """One established DTLS session, as a value (see the module)."""

    __slots__ = ("address", "serial", "credential", "key", "_hash")

    address: Address
    serial: int
    credential: Any
    key: str

    def __init__(self, address: Address, serial: int, credential: Any = None):
        set_ = object.__setattr__
        set_(self, "address", address)
        set_(self, "serial", serial)
        set_(self, "credential", credential)
        set_(self, "key", "dtls %s %d %d" % (address[0], address[1], serial))
        set_(self, "_hash", hash((address, serial)))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("DtlsPeer is immutable")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (type(other) is DtlsPeer and other.serial == self.serial
                                 and other.address == self.address)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __str__(self) -> str:
        host, port = self.address
        return ("dtls:[%s]:%d" if ":" in host else "dtls:%s:%d") % (host, port)

    __repr__ = __str__


class Plaintext(NamedTuple):
    """One record's whole plaintext from ``peer`` (for CoAP over DTLS: one message)."""

    peer: DtlsPeer
    data: bytes

    def __eq__(self, other: object) -> bool:
        return type(other) is Plaintext and tuple.__eq__(self, other)  # type: ignore[arg-type]

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = tuple.__hash__


@dataclass(frozen=True)
class SessionEstablished:
    """A handshake finished: from now on ``peer`` sends and receives plaintext."""

    peer: DtlsPeer
    credential: Any  # PresharedKey, Certificate, or None (no client credential)
    resumed: bool
    cipher: str = ""


@dataclass(frozen=True)
class SessionEnded:
    """``peer``'s session is over (it was established): nothing more goes to it."""

    peer: DtlsPeer
    reason: str  # "idle", "closed by peer", "error", "replaced", "credential removed"...


@dataclass(frozen=True)
class HandshakeFailed:
    """A handshake that got past its cookie and did not finish (for the failure summary
    and the metrics): ``outcome`` FAILED or TIMED_OUT, ``method`` PSK, X509 or UNKNOWN."""

    address: Address
    outcome: str
    reason: str
    method: str = UNKNOWN


Event = Any  # one of Plaintext, SessionEstablished, SessionEnded, HandshakeFailed

