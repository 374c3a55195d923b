"""Messages from the platform: decoded once, then dispatched by topic to the part that owns them.

ThingsBoard pushes some topics unsubscribed, and on a generic broker the bridge may read
its own publishes (see downstream.py for telling them apart). A message that cannot be
read is skipped and counted, with a warning per topic a minute at most.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from . import gateway
from .actions import Log
from .attributes import Attributes
from .devices import Devices
from .downstream import (GATEWAY_RPC_REQUEST_PREFIX, GATEWAY_RPC_RESPONSE_PREFIX,
                         attribute_response, attribute_update, loads, server_rpc,
                         topic_suffix_int, undecodable_reason)
from .limits import RateLimiter
from .parts import Action, Part
from .rpc import Rpc

SKIP_WARNING_INTERVAL = 60  # seconds between warnings about unreadable platform messages


class Messages(Part):
    def __init__(self, max_depth: int, devices: Devices, attributes: Attributes, rpc: Rpc):
        super().__init__()
        self.max_depth = max_depth
        self.rpc = rpc
        # one warning per topic a minute for platform messages that cannot be read
        self.skip_warnings = RateLimiter(1 / SKIP_WARNING_INTERVAL, 1, max_keys=1000)
        self.stats = {"downstream_skipped": 0}

        def update(doc: Any, now: float) -> List[Action]:
            parsed = attribute_update(doc)
            return attributes.on_update(parsed, now) if parsed else []

        def rpc_request(doc: Any, now: float) -> List[Action]:
            parsed = server_rpc(doc)
            return rpc.on_server_rpc(parsed, now) if parsed else []

        def response(doc: Any, now: float) -> List[Action]:
            parsed = attribute_response(doc)
            return attributes.on_response(parsed, now) if parsed else []

        # topic -> handler of the decoded document
        self.topics: Dict[str, Callable[[Any, float], List[Action]]] = {
            gateway.ATTRIBUTES: update,
            gateway.RPC: rpc_request,
            gateway.ATTRIBUTES_RESPONSE: response,
            gateway.DISCONNECT: lambda doc, now: devices.on_disconnected(doc),
        }

    def on_message(self, topic: str, payload: bytes, now: float) -> List[Action]:
        try:
            doc = loads(payload, self.max_depth)
        except ValueError as error:
            return self._skipped(topic, undecodable_reason(error), now)
        handler = self.topics.get(topic)
        if handler is not None:
            return handler(doc, now)
        n = topic_suffix_int(topic, GATEWAY_RPC_RESPONSE_PREFIX)
        if n is not None:
            return self.rpc.on_response(n, payload)
        if topic_suffix_int(topic, GATEWAY_RPC_REQUEST_PREFIX) is not None:
            return self.rpc.on_gateway_rpc(doc, now)
        return [Log("debug", "ignored a message on {topic}", {"topic": topic})]

    def _skipped(self, topic: str, reason: str, now: float) -> List[Action]:
        """A platform message that cannot be read: logged (a warning per topic a minute)."""
        self.stats["downstream_skipped"] += 1
        # v1/devices/me/rpc/request/7 and /8 share one warning
        if self.skip_warnings.allow(topic.rstrip("0123456789"), now) is None:
            return [Log("warn", "skipped a message from the platform on {topic}: {reason} (more "
                        "on this topic within {interval:.0f} s are logged at debug level)",
                        {"topic": topic, "reason": reason, "interval": SKIP_WARNING_INTERVAL})]
        return [Log("debug", "skipped a message from the platform on {topic}: {reason}",
                    {"topic": topic, "reason": reason})]
