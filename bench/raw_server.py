"""Raw baseline: a `websockets` server + redis-py asyncio pub/sub, fan-out once per process.

One Redis subscription per conversation per process, each frame encoded once (by the sender's
instance) and handed to the local sockets in a plain await loop. Same frames as the chat
server for what the benchmark uses: hello, message.send -> ack + message.new, resume, ping.
No persistence, no authorization beyond a token lookup in the dict it is given.

    python bench/raw_server.py --port 9001 --redis-port 6379 --tokens tokens.json --instance-id raw-0
"""

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import uuid

import redis.asyncio as aioredis
import uvloop
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


def dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


async def main(args: argparse.Namespace) -> None:
    with open(args.tokens) as f:
        tokens = json.load(f)  # token -> {"user_id", "username", "conversations": [...]}
    r = aioredis.Redis(host="127.0.0.1", port=args.redis_port, decode_responses=True)
    pubsub = r.pubsub()
    await pubsub.subscribe("raw:ctl")  # keeps listen() running before the first conversation
    local: dict[str, set] = {}

    async def fan_in() -> None:
        async for m in pubsub.listen():
            if m["type"] == "message" and m["channel"].startswith("raw:c:"):
                for ws in list(local.get(m["channel"][6:], ())):
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(m["data"])

    async def handler(ws) -> None:
        user = tokens.get(ws.request.headers.get("Authorization", "").partition(" ")[2])
        if user is None:
            await ws.close(4401)
            return
        for cid in user["conversations"]:
            if cid not in local:
                local[cid] = set()
                await pubsub.subscribe(f"raw:c:{cid}")
            local[cid].add(ws)
        try:
            await ws.send(
                dumps(
                    {
                        "type": "hello",
                        "connection_id": uuid.uuid4().hex,
                        "instance_id": args.instance_id,
                        "user": {"id": user["user_id"], "username": user["username"]},
                        "heartbeat_interval": 25,
                    }
                )
            )
            async for text in ws:
                frame = json.loads(text)
                kind, rid = frame.get("type"), frame.get("id")
                if kind == "message.send":
                    cid = frame["conversation_id"]
                    msg = {
                        "id": str(uuid.uuid4()),
                        "conversation_id": cid,
                        "seq": await r.incr(f"raw:seq:{cid}"),
                        "sender_id": user["user_id"],
                        "body": frame["body"],
                        "client_msg_id": frame.get("client_msg_id"),
                        "created_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
                    }
                    await r.publish(f"raw:c:{cid}", dumps({"type": "message.new", "message": msg}))
                    await ws.send(dumps({"type": "ack", "id": rid, "message": msg, "repeat": False}))
                elif kind == "resume":
                    await ws.send(dumps({"type": "ack", "id": rid, "resumed": frame.get("cursors", {})}))
                elif kind == "ping":
                    await ws.send(dumps({"type": "pong", "id": rid}))
        except ConnectionClosed:
            pass
        finally:
            for cid in user["conversations"]:
                local[cid].discard(ws)

    task = asyncio.create_task(fan_in())
    async with serve(handler, "127.0.0.1", args.port, max_size=2**20, backlog=2048) as server:
        await server.serve_forever()
    task.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--instance-id", default="raw")
    uvloop.run(main(parser.parse_args()))
