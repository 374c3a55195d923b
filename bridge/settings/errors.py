"""The two errors an operator sees before the bridge serves: a configuration with
problems (every one listed), and a problem met while starting (one line)."""

from __future__ import annotations

from typing import List


class ConfigError(Exception):
    """Every problem found in a configuration, one per line."""

    def __init__(self, problems: List[str], source: str = "configuration"):
        self.problems = problems
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        lines = ["%s has %d problem%s:" % (self.source, len(self.problems),
                                          "" if len(self.problems) == 1 else "s")]
        lines += ["  - " + problem for problem in self.problems]
        return "\n".join(lines)


class StartupError(Exception):
    """A problem found while starting (a port in use, DATA_DIR not writable, a damaged
    file): one line for the operator that names the port or file and what to do."""


class ConfigDeprecationWarning(FutureWarning):
    """A setting spelled the old way: it still works, under its new name."""
