"""A WebSocket server that greets like the chat server and then closes with the code named in
the path (``/4008``), so the SDK's handling of every close code is tested on a real socket.
``/1006`` drops the TCP connection without a close frame. Prints its port; stops on stdin EOF."""

import asyncio
import json
import sys

from websockets.asyncio.server import ServerConnection, serve


async def handler(ws: ServerConnection) -> None:
    assert ws.request is not None
    code = int(ws.request.path.strip("/").split("?")[0] or "1000")
    hello = {
        "type": "hello",
        "connection_id": "c",
        "instance_id": "closer",
        "user": {"id": 1, "username": "alice"},
        "heartbeat_interval": 25,
        "reconnect_window_ms": 200,
    }
    if code != 4401:
        await ws.send(json.dumps(hello))
    await asyncio.sleep(0.05)
    if code == 1006:
        ws.transport.abort()
        return
    await ws.close(code, "test")


async def main() -> None:
    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


asyncio.run(main())
