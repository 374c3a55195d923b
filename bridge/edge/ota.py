"""Firmware and software packages: fetched once, verified, cached on disk, served to every device.

``PackageStore.serve`` answers a download request. The package for (kind,
title, version) is taken from the cache under ``DATA_DIR/ota``; when it is
not there it is fetched once — a fetch in progress is shared by every device
that asks meanwhile — from the configured source:

* ``upstream``: ThingsBoard's device OTA topics on a short-lived MQTT session
  with the device's access token (``v2/fw/request/{id}/chunk/{n}``, answers
  on ``v2/fw/response/{id}/chunk/{n}``, errors on ``v2/fw/error``); the
  device's gateway sub-session is connected again afterwards, since the
  platform allows one session per device.
* ``directory``: the file ``DIRECTORY/<title>/<version>``, for every device (also one
  with no access token: a certificate or PSK device over DTLS).

Every package is checked against its size and ``fw_checksum`` (SHA256,
SHA384, SHA512, MD5, CRC32) before it is cached; one that fails is never
served (4.04, and an error in the log) and is not fetched again for a
minute. The cache is bounded (``ota.cache_max_bytes``): least recently served
packages go first, but never one served in the last ``IN_USE`` seconds, since
devices may be in the middle of downloading it block by block; while such
packages fill it, the cache stays over its bound (with a warning) until they
are no longer in use.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Union

from twisted.internet import defer
from twisted.python.failure import Failure

from ..settings import Config
from ..core import codes
from ..core.actions import ServePackage
from ..core.ota import Checksum, PackageInfo, supported
from ..logs import logger
from ..sqlite import create_private
from ..coap.blocks import LargeBody, etag
from ..coap.exchange import Answer
from ..coap.message import Message, make_response
from .short_session import SessionFailed, ShortSession, ShortSessions

log = logger("ota")
FAILURE_MEMORY = 60.0  # s a failed package is not fetched again
IN_USE = 300.0  # s after it was last served, a package is not evicted from the cache


class PackageError(Exception):
    """The package cannot be served; ``code`` is the device's answer."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _UpstreamDownload(ShortSession):
    """One package over ThingsBoard's device OTA topics, chunk by chunk, into ``path``;
    ``start()`` fires with the bytes received."""

    REQUEST_ID = 1

    def __init__(self, store: "PackageStore", info: PackageInfo, token: str, path: str):
        kind = info.kind
        self.error_topic = "v2/%s/error" % kind
        super().__init__(store.reactor, store.config.mqtt, token, "ota",
                         ["v2/%s/response/+/chunk/+" % kind, self.error_topic],
                         store.config.ota.timeout, "the download took longer than ota.timeout")
        self.info, self.path = info, path
        self.chunk_size = store.config.ota.chunk_size
        self.chunk = 0
        self.received = 0
        self.handle = open(path, "wb")
        self.request_prefix = "v2/%s/request/%d/chunk/" % (kind, self.REQUEST_ID)
        self.response_prefix = "v2/%s/response/%d/chunk/" % (kind, self.REQUEST_ID)

    def link_up(self) -> None:
        self._request()

    def published(self, mid: int, reason_code: int) -> None:
        if reason_code >= 0x80:
            self.fail("the platform refused the chunk request (0x%02x)" % reason_code)

    def message(self, topic: str, payload: bytes) -> None:
        if topic == self.error_topic:
            self.fail("the platform answered %r" % payload[:64].decode(errors="replace"))
            return
        if topic != self.response_prefix + str(self.chunk):
            return
        self.handle.write(payload)
        self.received += len(payload)
        expected = self.info.size
        if len(payload) < self.chunk_size or (expected is not None and self.received >= expected):
            self.succeed(self.received)
        else:
            self.chunk += 1
            self._request()

    def _request(self) -> None:
        self.publish(self.request_prefix + str(self.chunk), str(self.chunk_size).encode())

    def closed(self) -> None:
        self.handle.close()


def _download_failed(failure: Failure) -> None:
    failure.trap(SessionFailed)
    raise PackageError(codes.BAD_GATEWAY, failure.value.reason)


class PackageStore:
    def __init__(self, config: Config, reactor: Any,
                 reconnect: Callable[[str], None], sessions: Optional[ShortSessions] = None):
        self.config = config
        self.reactor = reactor
        self.reconnect = reconnect  # re-send v1/gateway/connect for a device
        self.sessions = sessions if sessions is not None else ShortSessions()
        self.directory = os.path.join(config.data_dir, "ota")
        self.cached: "OrderedDict[str, int]" = OrderedDict()  # package key -> size, LRU order
        self.served_at: Dict[str, float] = {}  # package key -> when it was last served
        self.fetching: Dict[str, List[defer.Deferred]] = {}
        self.failed: Dict[str, float] = {}
        self.fetches = 0  # packages fetched from their source (for tests and metrics)

    def start(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        for name in sorted(os.listdir(self.directory),
                           key=lambda n: os.stat(os.path.join(self.directory, n)).st_mtime):
            path = os.path.join(self.directory, name)
            if name.endswith(".part"):
                os.remove(path)
            else:
                self.cached[name] = os.path.getsize(path)

    def serve(self, action: ServePackage) -> defer.Deferred:
        """A Deferred firing with the device's answer (a ``Message`` or an ``Answer``)."""
        d = self._ensure(action.package, action.token, action.device)
        d.addCallback(self._answer, action)
        d.addErrback(self._refuse, action)
        return d

    def _answer(self, path: str, action: ServePackage) -> Union[Message, Answer]:
        key = action.package.key
        self.cached.move_to_end(key)
        self.served_at[key] = self.reactor.seconds()
        size = self.cached[key]
        if action.length is not None:
            with open(path, "rb") as handle:
                handle.seek(action.offset)
                data = handle.read(action.length) if action.offset < size else b""
            return make_response(codes.CONTENT, data)
        def read(offset: int, length: int) -> bytes:
            with open(path, "rb") as handle:
                handle.seek(offset)
                return handle.read(length)
        # every block carries the same tag: they are one representation
        return Answer(make_response(codes.CONTENT),
                      large=LargeBody(size, read, etag(key.encode("utf-8"))))

    def _refuse(self, failure: Any, action: ServePackage) -> Message:
        failure.trap(PackageError)
        error = failure.value
        return make_response(error.code, error.reason.encode("utf-8"), codes.TEXT_PLAIN)

    def _ensure(self, info: PackageInfo, token: Optional[str], device: str) -> defer.Deferred:
        key = info.key
        path = os.path.join(self.directory, key)
        if key in self.cached:
            return defer.succeed(path)
        failed_at = self.failed.get(key)
        if failed_at is not None and self.reactor.seconds() - failed_at < FAILURE_MEMORY:
            return defer.fail(PackageError(codes.NOT_FOUND, "the package failed verification; "
                                                            "see the bridge's log"))
        waiter: defer.Deferred = defer.Deferred()
        if key in self.fetching:
            self.fetching[key].append(waiter)
            return waiter
        self.fetching[key] = [waiter]
        self.fetches += 1
        log.info("Fetching {kind} package {title} {version} ({source}, for {device})",
                 kind=info.kind, title=info.title, version=info.version,
                 source=self.config.ota.source, device=device)
        d = defer.maybeDeferred(self._fetch, info, token, device, path + ".part")
        d.addCallback(self._verify, info, path)
        d.addBoth(self._fetched, key, path)
        d.addErrback(self._cache_failed, key)
        return waiter

    def _fetch(self, info: PackageInfo, token: Optional[str], device: str, part: str) -> Any:
        create_private(part)
        if self.config.ota.source == "directory":
            source = os.path.join(self.config.ota.directory, info.title, info.version)
            if not os.path.isfile(source):
                raise PackageError(codes.NOT_FOUND, "no file for this package")
            with open(source, "rb") as src, open(part, "wb") as dst:
                while True:
                    block = src.read(1 << 20)
                    if not block:
                        break
                    dst.write(block)
            return None
        if token is None:  # the core answers such a device 4.04 itself (core/downloads.py)
            raise PackageError(codes.NOT_FOUND, "the upstream source needs the device's "
                                                "access token, and it has none")
        d = _UpstreamDownload(self, info, token, part).start(self.sessions)
        d.addErrback(_download_failed)

        def reconnect(result: Any) -> Any:
            self.reconnect(device)  # the device's own session evicted its gateway sub-session
            return result
        return d.addBoth(reconnect)

    def _verify(self, _: Any, info: PackageInfo, path: str) -> None:
        part = path + ".part"
        size = os.path.getsize(part)
        if info.size is not None and size != info.size:
            raise PackageError(codes.NOT_FOUND, "package size %d, expected %d" % (size, info.size))
        if info.checksum is None:
            log.warn("{title} {version} has no checksum on the platform; serving it unverified",
                     title=info.title, version=info.version)
        else:
            if not supported(info.algorithm):
                raise PackageError(codes.NOT_FOUND, "unsupported checksum algorithm %r"
                                   % info.algorithm)
            checksum = Checksum(info.algorithm or "SHA256")
            with open(part, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    checksum.update(block)
            if not checksum.matches(info.checksum):
                raise PackageError(codes.NOT_FOUND, "checksum mismatch")

    def _fetched(self, result: Any, key: str, path: str) -> None:
        part = path + ".part"
        if isinstance(result, Failure):
            error = result.value
            if os.path.exists(part):
                os.remove(part)
            self.failed[key] = self.reactor.seconds()
            if not isinstance(error, PackageError):
                log.failure("Fetching package {key} failed", failure=result, key=key)
                error = PackageError(codes.INTERNAL_SERVER_ERROR, "internal error")
            else:
                log.error("Package {key} refused: {reason}; it will not be served", key=key,
                          reason=error.reason)
            for waiter in self.fetching.pop(key):
                waiter.errback(error)
            return
        os.replace(part, path)
        self.cached[key] = os.path.getsize(path)
        self.failed.pop(key, None)
        log.info("Package {key} cached ({size} bytes)", key=key, size=self.cached[key])
        self._evict(keep=key)
        for waiter in self.fetching.pop(key):
            waiter.callback(path)

    def _cache_failed(self, failure: Failure, key: str) -> None:
        # a bug, or the disk, while caching or discarding a package: its waiters get 5.00
        log.failure("Caching package {key} failed", failure=failure, key=key)
        for waiter in self.fetching.pop(key, []):
            waiter.errback(PackageError(codes.INTERNAL_SERVER_ERROR, "internal error"))

    def _evict(self, keep: str) -> None:
        total = sum(self.cached.values())
        bound = self.config.ota.cache_max_bytes
        in_use_since = self.reactor.seconds() - IN_USE
        for key in list(self.cached):
            if total <= bound:
                break
            if key == keep or self.served_at.get(key, float("-inf")) > in_use_since:
                continue  # being downloaded, perhaps: evicting it would fetch it again
            total -= self.cached.pop(key)
            self.served_at.pop(key, None)
            os.remove(os.path.join(self.directory, key))
            log.info("Package {key} evicted from the cache", key=key)
        if total > bound:
            log.warn("Package cache holds {size} bytes, over ota.cache_max_bytes ({bound}): "
                     "its packages are in use", size=total, bound=bound)
