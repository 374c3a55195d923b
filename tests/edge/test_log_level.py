"""``log_level`` filters the bridge's loggers, debug lines included (bridge.logs), and is
read by any of its usual names in any case."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
from twisted.logger import globalLogPublisher

from bridge import settings as config_module
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
        log.warn("a warning {n}", n=3)
    finally:
        globalLogPublisher.removeObserver(observer)
        logs.set_level("info")
    return [e for e in events if e.get("log_namespace") == "coapbridge.test"]


def test_debug_lines_pass_only_at_debug_level():
    assert [e["n"] for e in _seen("debug")] == [1, 2, 3]
    assert [e["n"] for e in _seen("info")] == [2, 3]
    assert [e["n"] for e in _seen("warning")] == [3]
    assert [e["n"] for e in _seen("ERROR")] == []
    assert [e["n"] for e in _seen("debug")] == [1, 2, 3]  # and back


@pytest.mark.parametrize("name,level", [
    ("warning", "warn"), ("warn", "warn"), ("WARNING", "warn"), ("Warn", "warn"),
    ("error", "error"), ("ERROR", "error"), ("critical", "critical"), ("fatal", "critical"),
    ("DEBUG", "debug"), (" info ", "info"),
])
def test_log_level_takes_the_usual_names_in_any_case(name, level):
    assert config_module.load_text("log_level: %r" % name, {}).log_level == level
    assert config_module.load_text('log_level: "${LOG_LEVEL:info}"',
                                   {"LOG_LEVEL": name}).log_level == level


def test_an_unknown_level_is_a_configuration_problem_naming_the_known_ones():
    with pytest.raises(config_module.ConfigError) as error:
        config_module.load_text("log_level: verbose", {})
    assert "log_level: must be one of debug, info, warn, error, critical (any case; " \
           "warning = warn; fatal = critical), got 'verbose'" in str(error.value)
