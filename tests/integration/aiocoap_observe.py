"""Observe a resource with the aiocoap library; print one JSON line per response.

usage: python aiocoap_observe.py URI COUNT TIMEOUT [--cancel] [--port PORT]
Prints {"code": "2.05", "observe": n, "payload": "...", "hex": "...", "content_format": n}
for the first response and each notification (``hex``: the payload's bytes, for binary
ones), until COUNT lines or TIMEOUT seconds. With --cancel it cancels the observation
(aiocoap answers the next notification with RST). With --port it sends from that local
UDP port (a server context bound to it), so that a test knows its source endpoint. An
observation that ends (an error notification) prints {"ended": "..."}.
"""

import asyncio
import json
import sys
from typing import Optional

import aiocoap
import aiocoap.error


async def main(uri: str, count: int, timeout: float, cancel: bool,
               port: Optional[int] = None) -> None:
    if port is None:
        context = await aiocoap.Context.create_client_context()
    else:
        context = await aiocoap.Context.create_server_context(
            None, bind=("::", port), transports=["udp6"])
    request = aiocoap.Message(code=aiocoap.GET, uri=uri, observe=0)
    pr = context.request(request)

    def show(response: aiocoap.Message) -> None:
        print(json.dumps({"code": str(response.code).split()[0], "observe": response.opt.observe,
                          "payload": response.payload.decode(errors="replace"),
                          "hex": response.payload.hex(),
                          "content_format": None if response.opt.content_format is None
                          else int(response.opt.content_format)}), flush=True)

    first = await pr.response
    show(first)
    seen = 1
    try:
        async def follow() -> None:
            nonlocal seen
            async for notification in pr.observation:
                show(notification)
                seen += 1
                if seen >= count:
                    break
            else:  # the server ended the observation (an error notification)
                print(json.dumps({"ended": "observation ended"}), flush=True)
        if seen < count:
            await asyncio.wait_for(follow(), timeout)
    except asyncio.TimeoutError:
        pass
    except aiocoap.error.Error as exc:  # the observation ended
        print(json.dumps({"ended": repr(exc)}), flush=True)
    if cancel:
        pr.observation.cancel()
        print(json.dumps({"cancelled": True}), flush=True)
        await asyncio.sleep(timeout)
    await context.shutdown()


if __name__ == "__main__":
    local = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else None
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), "--cancel" in sys.argv,
                     local))
