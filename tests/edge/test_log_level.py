"""``log_level`` filters the bridge's loggers, debug lines included (bridge.logs)."""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.logger import globalLogPublisher

from bridge import logs


def _seen(level: str) -> List[Dict[str, Any]]:
    events: List[Dict[str, Any]] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    try:
        logs.set_level(level)
        log = logs.logger("test")
        log.debug("a debug line {n}", n=1)
        log.info("an info line {n}", n=2)
    finally:
        globalLogPublisher.removeObserver(observer)
        logs.set_level("info")
    return [e for e in events if e.get("log_namespace") == "coapbridge.test"]


def test_debug_lines_pass_only_at_debug_level():
    assert [e["n"] for e in _seen("debug")] == [1, 2]
    assert [e["n"] for e in _seen("info")] == [2]
    assert [e["n"] for e in _seen("warn")] == []
    assert [e["n"] for e in _seen("debug")] == [1, 2]  # and back
