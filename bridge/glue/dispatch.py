"""The core's actions -> their handlers: a table from action type to handler, built once."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Type

Handlers = Dict[Type[Any], Callable[[Any], None]]


class ActionDispatcher:
    """``apply(actions)`` calls each action's handler, in order: one dict lookup per
    action (this is on the hot path). An action type with no handler is a bug and
    raises ``TypeError``; the actions after it are not applied.

    The parts that handle actions also apply the core's answers, so they are built
    with ``apply`` first and their handlers are registered once afterwards."""

    def __init__(self) -> None:
        self._handlers: Handlers = {}

    def register(self, handlers: Handlers) -> None:
        for kind in handlers:
            if kind in self._handlers:
                raise ValueError("%s has a handler already" % kind.__name__)
        self._handlers.update(handlers)

    def apply(self, actions: Iterable[Any]) -> None:
        handlers = self._handlers
        for action in actions:
            try:
                handler = handlers[type(action)]
            except KeyError:
                raise TypeError("no handler for core action %r" % (action,)) from None
            handler(action)
