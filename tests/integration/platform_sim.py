"""A paho client that plays ThingsBoard's gateway API for the downstream tests.

It answers ``v1/gateway/attributes/request`` from an attribute table with the
shapes ThingsBoard uses (legacy format: ``value`` for one requested key,
``values`` for several, nothing when nothing is found; ``keys: []`` answers
client and shared merged), pushes shared-attribute updates and server-side
RPCs, and answers client-side RPCs on the gateway's own session.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Dict, Optional

from conftest import Platform


class PlatformSim(Platform):
    def __init__(self, port: int):
        self.attributes: Dict[str, Dict[str, Dict[str, Any]]] = {}
        self.answer_attributes = True
        self.client_rpc_answer: Optional[Any] = None
        self.sim_lock = threading.Lock()
        super().__init__(port)
        self.client.subscribe("v1/devices/me/rpc/request/+", qos=1)

    def set_attributes(self, device: str, client: Dict[str, Any], shared: Dict[str, Any]) -> None:
        with self.sim_lock:
            self.attributes[device] = {"client": dict(client), "shared": dict(shared)}

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        super()._on_message(client, userdata, message)
        if message.topic == "v1/gateway/attributes/request" and self.answer_attributes:
            self._answer_attributes(json.loads(message.payload))
        elif message.topic.startswith("v1/devices/me/rpc/request/") \
                and self.client_rpc_answer is not None:
            n = message.topic.rsplit("/", 1)[1]
            self.client.publish("v1/devices/me/rpc/response/" + n,
                                json.dumps(self.client_rpc_answer), qos=1)

    def _answer_attributes(self, request: Dict[str, Any]) -> None:
        with self.sim_lock:
            table = self.attributes.get(request["device"], {"client": {}, "shared": {}})
        scope = table["client"] if request["client"] else table["shared"]
        response: Dict[str, Any] = {"id": request["id"], "device": request["device"]}
        if "key" in request:
            if request["key"] in scope:
                response["value"] = scope[request["key"]]
        elif request["keys"] == []:
            merged = dict(table["client"], **table["shared"])
            if len(merged) == 1:
                response["value"] = next(iter(merged.values()))  # ThingsBoard's unnamed value
            elif merged:
                response["values"] = merged
        else:
            found = {k: scope[k] for k in request["keys"] if k in scope}
            if found:
                response["values"] = found
        self.client.publish("v1/gateway/attributes/response", json.dumps(response), qos=1)

    def push_attributes(self, device: str, data: Dict[str, Any]) -> None:
        with self.sim_lock:
            table = self.attributes.setdefault(device, {"client": {}, "shared": {}})
            for key in data.get("deleted", []):
                table["shared"].pop(key, None)
            table["shared"].update({k: v for k, v in data.items() if k != "deleted"})
        self.client.publish("v1/gateway/attributes", json.dumps({"device": device, "data": data}),
                            qos=1).wait_for_publish(5)

    def send_rpc(self, device: str, rpc_id: int, method: str, params: Any) -> None:
        body = {"device": device, "data": {"id": rpc_id, "method": method, "params": params}}
        self.client.publish("v1/gateway/rpc", json.dumps(body), qos=1).wait_for_publish(5)

    def gateway_rpc(self, n: int, method: str, params: Any) -> None:
        self.client.publish("v1/devices/me/rpc/request/%d" % n,
                            json.dumps({"method": method, "params": params}),
                            qos=1).wait_for_publish(5)
