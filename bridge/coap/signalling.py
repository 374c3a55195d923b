"""Signalling messages of CoAP on reliable transports, without I/O (RFC 8323 §5).

Codes 7.01 CSM (Capabilities and Settings), 7.02 Ping, 7.03 Pong, 7.04 Release
and 7.05 Abort. Their option numbers are per code (§5.2): an even number is
elective, an odd one critical, and an unknown critical option makes the
message a connection error (Abort). Options are coded as in RFC 7252 §3.1, by
the shared codec (``options.decode_options``, ``options.encode_options``).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

from .framing import Frame
from .options import Malformed, decode_options
from .options import encode_options as _encode

CSM, PING, PONG, RELEASE, ABORT = 0xE1, 0xE2, 0xE3, 0xE4, 0xE5  # 7.01 ... 7.05
NAMES = {CSM: "CSM", PING: "Ping", PONG: "Pong", RELEASE: "Release", ABORT: "Abort"}
SIGNAL_CLASS = 7

MAX_MESSAGE_SIZE = 2  # CSM, uint 0-4 bytes
BLOCK_WISE_TRANSFER = 4  # CSM, empty
CUSTODY = 2  # Ping and Pong, empty
ALTERNATIVE_ADDRESS = 2  # Release, string 1-255, repeatable
HOLD_OFF = 4  # Release, uint 0-3 bytes (seconds)
BAD_CSM_OPTION = 2  # Abort, uint 0-2 bytes

BASE_MAX_MESSAGE_SIZE = 1152  # until the peer's CSM says otherwise (§5.3.1)

# code -> {option: (lowest, highest) length of its value}
KNOWN = {
    CSM: {MAX_MESSAGE_SIZE: (0, 4), BLOCK_WISE_TRANSFER: (0, 0)},
    PING: {CUSTODY: (0, 0)},
    PONG: {CUSTODY: (0, 0)},
    RELEASE: {ALTERNATIVE_ADDRESS: (1, 255), HOLD_OFF: (0, 3)},
    ABORT: {BAD_CSM_OPTION: (0, 2)},
}

Options = List[Tuple[int, bytes]]


class SignalError(Exception):
    """A signalling message that must abort the connection; ``option``: the option to
    name in the Abort's Bad-CSM-Option (a CSM's), if any."""

    def __init__(self, reason: str, option: Optional[int] = None):
        super().__init__(reason)
        self.reason = reason
        self.option = option


class Signal(NamedTuple):
    code: int
    token: bytes
    options: Options  # the known ones, in order
    payload: bytes

    def has(self, number: int) -> bool:
        return any(n == number for n, _ in self.options)

    def uint(self, number: int) -> Optional[int]:
        for n, value in self.options:
            if n == number:
                return int.from_bytes(value, "big")
        return None


def options(body: bytes) -> Tuple[Options, bytes]:
    """The options (number, value) of a message body and its payload; ``SignalError``
    when the body is malformed."""
    try:
        found, payload = decode_options(body, 0, len(body))
    except Malformed as exc:
        raise SignalError(str(exc)) from None
    return list(found), bytes(payload)


def encode_options(items: Options, payload: bytes = b"") -> bytes:
    """A body of ``items`` (sorted by number here) and ``payload``."""
    body = _encode(tuple(sorted(items, key=lambda item: item[0])))
    return body + b"\xff" + payload if payload else body


def uint(value: int) -> bytes:
    """A uint option value in the fewest bytes (0 is empty)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def parse(frame: Frame) -> Signal:
    """The signalling message in ``frame`` (a 7.xx code); ``SignalError`` for an unknown
    code, a malformed body, an unknown critical option or a value out of its range.
    Unknown elective options are left out."""
    known = KNOWN.get(frame.code)
    if known is None:
        raise SignalError("unknown signalling code 7.%02d" % (frame.code & 0x1F))
    items, payload = options(frame.body)
    kept: Options = []
    for number, value in items:
        lengths = known.get(number)
        if lengths is None:
            if number & 1:
                raise SignalError("unknown critical option %d in %s" % (number, NAMES[frame.code]),
                                  number if frame.code == CSM else None)
            continue
        if not lengths[0] <= len(value) <= lengths[1]:
            raise SignalError("option %d of %s has a length out of range" % (number,
                              NAMES[frame.code]), number if frame.code == CSM else None)
        kept.append((number, value))
    return Signal(frame.code, frame.token, kept, payload)


def csm_body(max_message_size: int, block_wise: bool) -> bytes:
    items: Options = [(MAX_MESSAGE_SIZE, uint(max_message_size))]
    if block_wise:
        items.append((BLOCK_WISE_TRANSFER, b""))
    return encode_options(items)


def abort_body(diagnostic: str, bad_csm_option: Optional[int] = None) -> bytes:
    items: Options = [] if bad_csm_option is None else [(BAD_CSM_OPTION, uint(bad_csm_option))]
    return encode_options(items, diagnostic.encode("utf-8"))


def release_body(hold_off: Optional[int] = None) -> bytes:
    """A Release without Alternative-Address; ``hold_off``: seconds before reconnecting."""
    return encode_options([] if hold_off is None else [(HOLD_OFF, uint(hold_off))])


def pong_body(custody: bool) -> bytes:
    return encode_options([(CUSTODY, b"")] if custody else [])
