"""Firmware and software packages (OTA), the pure parts.

The platform assigns a package to a device through shared attributes:
``fw_title``, ``fw_version``, ``fw_size``, ``fw_checksum``,
``fw_checksum_algorithm`` (``sw_*`` for software). A device downloads it with
``GET /fw/{token}`` (or ``/sw``, or ``/api/v1/{token}/firmware``) and the
query ``title``, ``version``, and optionally ``size`` and ``chunk`` for the
bytes ``[size*chunk, size*chunk + size)``; without them the whole package
is served, by Block2 for anything over one block.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from .codes import BadRequest

FIRMWARE, SOFTWARE = "fw", "sw"
ALGORITHMS = ("SHA256", "SHA384", "SHA512", "MD5", "CRC32")


def keys(kind: str) -> List[str]:
    return ["%s_%s" % (kind, name) for name in
            ("title", "version", "size", "checksum", "checksum_algorithm")]


@dataclass(frozen=True)
class PackageInfo:
    kind: str
    title: str
    version: str
    size: Optional[int] = None
    checksum: Optional[str] = None
    algorithm: Optional[str] = None

    @property
    def key(self) -> str:
        """A file-system-safe name for this (kind, title, version)."""
        digest = hashlib.sha256(("%s\0%s\0%s" % (self.kind, self.title, self.version))
                                .encode("utf-8")).hexdigest()
        return "%s-%s" % (self.kind, digest[:32])


def package_from(attributes: Dict[str, Any], kind: str) -> Optional[PackageInfo]:
    title = attributes.get(kind + "_title")
    version = attributes.get(kind + "_version")
    if not isinstance(title, str) or not title or version is None:
        return None
    size = attributes.get(kind + "_size")
    checksum = attributes.get(kind + "_checksum")
    algorithm = attributes.get(kind + "_checksum_algorithm")
    return PackageInfo(kind, title, str(version),
                       size if isinstance(size, int) and not isinstance(size, bool) else None,
                       checksum if isinstance(checksum, str) and checksum else None,
                       algorithm.upper() if isinstance(algorithm, str) and algorithm else None)


@dataclass(frozen=True)
class OtaQuery:
    title: Optional[str]
    version: Optional[str]
    size: Optional[int]
    chunk: Optional[int]

    def byte_range(self) -> Optional[tuple]:
        """(offset, length) for a size/chunk request, None for the whole package."""
        if self.size is None:
            return None
        return (self.size * (self.chunk or 0), self.size)


def _number(query: Dict[str, str], name: str) -> Optional[int]:
    text = query.get(name)
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit()):
        raise BadRequest("%s must be a non-negative integer" % name)
    return int(text)


def parse_query(items: Sequence[str]) -> OtaQuery:
    query: Dict[str, str] = {}
    for item in items:
        name, _, value = item.partition("=")
        query[name] = value
    size, chunk = _number(query, "size"), _number(query, "chunk")
    if chunk is not None and size is None:
        raise BadRequest("chunk needs size")
    if size == 0:
        raise BadRequest("size must be greater than 0")
    return OtaQuery(query.get("title") or None, query.get("version") or None, size, chunk)


def check(info: PackageInfo, query: OtaQuery) -> None:
    """4.00 unless the query names the assigned package (when it names one)."""
    if query.title is not None and query.title != info.title:
        raise BadRequest("title does not match the package assigned to this device")
    if query.version is not None and query.version != info.version:
        raise BadRequest("version does not match the package assigned to this device")


class Checksum:
    """Incremental checksum with ThingsBoard's algorithm names."""

    def __init__(self, algorithm: str):
        self.algorithm = algorithm.upper()
        self._crc = 0
        self._hash = None if self.algorithm == "CRC32" else hashlib.new(self.algorithm.lower())

    def update(self, data: bytes) -> None:
        if self._hash is None:
            self._crc = zlib.crc32(data, self._crc)
        else:
            self._hash.update(data)

    def matches(self, expected: str) -> bool:
        expected = expected.strip().lower()
        if self._hash is not None:
            return self._hash.hexdigest() == expected
        value = self._crc & 0xFFFFFFFF
        # ThingsBoard prints Guava's HashCode: the CRC's bytes little-endian; accept both
        return expected in ("%08x" % value, value.to_bytes(4, "little").hex(), str(value))


def supported(algorithm: Optional[str]) -> bool:
    return algorithm is not None and algorithm.upper() in ALGORITHMS
