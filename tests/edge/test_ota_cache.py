"""The bounded package cache of bridge.edge.ota.PackageStore (directory source, a Clock).

A package being downloaded block by block must stay cached while another package is
fetched: evicting it would fetch it again for its next block, and two packages that do
not fit together would take turns evicting each other.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from bridge import settings as config_module
from bridge import startup_checks
from bridge.core.actions import ServePackage
from bridge.core.ota import FIRMWARE, PackageInfo
from bridge.edge import ota

SIZE = 600  # two packages do not fit in the 1000-byte cache below


@pytest.fixture
def store(tmp_path):
    source = tmp_path / "packages"
    for title in ("a", "b", "c"):
        (source / title).mkdir(parents=True)
        (source / title / "1").write_bytes(title.encode() * SIZE)
    config = startup_checks.load_text(json.dumps({
        "data_dir": str(tmp_path / "data"),
        "ota": {"source": "directory", "directory": str(source), "cache_max_bytes": 1000}}), {})
    clock = Clock()
    packages = ota.PackageStore(config, clock, lambda device: None)
    packages.start()
    return packages


def serve(store, title, offset=0):
    """Serve ``SIZE // 6`` bytes of package ``title`` at ``offset``; returns the bytes."""
    body = title.encode() * SIZE
    info = PackageInfo(FIRMWARE, title, "1", SIZE, hashlib.sha256(body).hexdigest(), "SHA256")
    answers = []
    store.serve(ServePackage(1, "Dev " + title, "tok", info, offset, SIZE // 6)).addCallback(
        answers.append)
    [answer] = answers
    return answer.payload


def cached_titles(store):
    return sorted(open(os.path.join(store.directory, key), "rb").read(1).decode()
                  for key in store.cached)


def test_a_package_in_use_is_not_evicted_when_another_is_fetched(store):
    warnings = []

    def observer(event):
        if event["log_level"] == LogLevel.warn:
            warnings.append(event)
    globalLogPublisher.addObserver(observer)
    try:
        assert serve(store, "a") == b"a" * 100
        store.reactor.advance(10)
        assert serve(store, "b") == b"b" * 100  # the cache is over its bound now
    finally:
        globalLogPublisher.removeObserver(observer)
    assert cached_titles(store) == ["a", "b"]
    assert [e["log_format"] for e in warnings if "cache" in e["log_format"]] == [
        "Package cache holds {size} bytes, over ota.cache_max_bytes ({bound}): "
        "its packages are in use"]
    for n in range(1, 6):  # both downloads go on, block after block, fetched once each
        store.reactor.advance(1)
        assert serve(store, "a", n * 100) == b"a" * 100
        assert serve(store, "b", n * 100) == b"b" * 100
    assert store.fetches == 2


def test_packages_no_longer_in_use_are_evicted_least_recently_served_first(store):
    serve(store, "a")
    store.reactor.advance(1)
    serve(store, "b")
    store.reactor.advance(ota.IN_USE + 1)
    serve(store, "c")
    assert cached_titles(store) == ["c"]  # 1800 bytes: both older ones had to go
    assert sorted(os.listdir(store.directory)) == sorted(store.cached)
    store.reactor.advance(ota.IN_USE + 1)
    serve(store, "a")  # fetched again; "c" is no longer in use
    assert cached_titles(store) == ["a"] and store.fetches == 4


def test_the_directory_source_serves_a_device_without_a_token(store):
    body = b"a" * SIZE  # a certificate or PSK device over DTLS has no access token
    info = PackageInfo(FIRMWARE, "a", "1", SIZE, hashlib.sha256(body).hexdigest(), "SHA256")
    answers = []
    store.serve(ServePackage(1, "Cert device", None, info, 0, 100)).addCallback(answers.append)
    assert [answer.payload for answer in answers] == [body[:100]]
