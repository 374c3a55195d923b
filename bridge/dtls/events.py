"""What the DTLS server (``bridge.dtls.server``) tells its driver: immutable values.

A session is known to everyone above the server by its ``DtlsPeer``: a small frozen
value (address, serial, credential), hashable, equal only to itself (the server makes
one per session), and printable for logs (``dtls:HOST:PORT``). It does not send anything: the driver hands it back to
``DtlsServer.send`` with the plaintext. It is made once, when the handshake finishes,
so it carries the verified credential; the CoAP layer uses it as the peer of its
messages (``key`` is the string its deduplication keys on, ``address`` the source its
limits count per address, ``credential`` what the request adapter authenticates).

The events are NamedTuples, immutable and cheap to build (``Plaintext`` is built per
record, ``SessionEstablished`` per handshake), each equal only to events of its own
type, as the core's per-request values are.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Tuple

from ..core.actions import _typed  # each event equal only to its own type

Address = Tuple[str, int]

# HandshakeFailed.outcome
FAILED = "failed"  # an alert sent or received, a refused certificate
TIMED_OUT = "timed out"  # not finished by dtls.handshake_timeout (a wrong PSK ends so)

# the method of a handshake: what the client authenticated with (as far as it got);
# NONE: no client credential (a token device), or unknown for a failed handshake
PSK, X509, NONE = "psk", "x509", "none"
UNKNOWN = NONE


_set = object.__setattr__


class DtlsPeer:
    """One established DTLS session, as a value (see the module). The server makes one
    per session, so it is equal only to itself, and hashed as fast as any object (it is
    a key of several dicts per request); it cannot be changed."""

    __slots__ = ("address", "serial", "credential", "key")

    address: Address
    serial: int
    credential: Any
    key: str

    def __init__(self, address: Address, serial: int, credential: Any = None,
                 key: str = ""):
        _set(self, "address", address)
        _set(self, "serial", serial)
        _set(self, "credential", credential)
        _set(self, "key", key or "dtls %s %d %d" % (address[0], address[1], serial))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("DtlsPeer is immutable")

    def __str__(self) -> str:
        host, port = self.address
        return ("dtls:[%s]:%d" if ":" in host else "dtls:%s:%d") % (host, port)

    __repr__ = __str__


@_typed
class Plaintext(NamedTuple):
    """One record's whole plaintext from ``peer`` (for CoAP over DTLS: one message)."""

    peer: DtlsPeer
    data: bytes


@_typed
class SessionEstablished(NamedTuple):
    """A handshake finished: from now on ``peer`` sends and receives plaintext."""

    peer: DtlsPeer
    credential: Any  # PresharedKey, Certificate, or None (no client credential)
    resumed: bool
    cipher: str = ""
    method: str = NONE  # PSK, X509 or NONE, as the credential says
    seconds: float = 0.0  # from its cookie's verification to its Finished


@_typed
class SessionEnded(NamedTuple):
    """``peer``'s session is over (it was established): nothing more goes to it."""

    peer: DtlsPeer
    reason: str  # "idle", "closed by peer", "error", "replaced", "credential removed"...


@_typed
class HandshakeFailed(NamedTuple):
    """A handshake that got past its cookie and did not finish (for the failure summary
    and the metrics): ``outcome`` FAILED or TIMED_OUT, ``method`` PSK, X509 or NONE."""

    address: Address
    outcome: str
    reason: str
    method: str = NONE
    seconds: float = 0.0  # from its cookie's verification to its end


Event = Any  # one of Plaintext, SessionEstablished, SessionEnded, HandshakeFailed

