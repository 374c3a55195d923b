"""A fast platform for benchmarks: answers attribute requests, counts telemetry, pushes updates.

    python bench/fakeplatform.py PORT MODE [N]
      count   : count v1/gateway/telemetry entries; prints the total on stdin EOF
      answer  : answer v1/gateway/attributes/request ({} or fw_* attributes)
      push N  : then publish one shared-attribute update for each of N devices "obs{n}"
"""

from __future__ import annotations

import json
import sys
import threading

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

FW = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}


def main() -> None:
    port, mode = int(sys.argv[1]), sys.argv[2]
    count = [0]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-platform-" + mode)
    client.max_inflight_messages_set(0)
    ready = threading.Event()

    def on_message(c, userdata, message):
        if message.topic == "v1/gateway/telemetry":
            for entries in json.loads(message.payload).values():
                count[0] += len(entries)
        elif message.topic == "v1/gateway/attributes/request":
            request = json.loads(message.payload)
            answer = {"id": request["id"], "device": request["device"]}
            wanted = request.get("keys") or [request.get("key")]
            found = {k: FW[k] for k in wanted if k in FW}
            if len(wanted) == 1 and found:
                answer["value"] = found[wanted[0]]
            elif found:
                answer["values"] = found
            c.publish("v1/gateway/attributes/response", json.dumps(answer), qos=1)

    client.on_message = on_message
    client.on_subscribe = lambda *a: ready.set()
    client.connect("127.0.0.1", port)
    client.subscribe("v1/gateway/telemetry" if mode == "count" else "v1/gateway/attributes/request",
                     qos=1)
    client.loop_start()
    ready.wait(10)
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "push":
            n = int(command[1])
            for i in range(n):
                client.publish("v1/gateway/attributes",
                               json.dumps({"device": "obs%d" % i, "data": {"setpoint": 21}}), qos=1)
            print("pushed", flush=True)
        elif command[0] == "count":
            print(count[0], flush=True)
    client.loop_stop()


if __name__ == "__main__":
    main()
