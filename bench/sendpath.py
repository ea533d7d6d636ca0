"""What one message's send costs the server, and what an idle instance costs, without fan-out.

    .venv/bin/python -m bench.sendpath                         # this project, 3,000 sends back to back
    .venv/bin/python -m bench.sendpath --gap 0.05 --sends 300  # paced at 20 msg/s, as in S1
    .venv/bin/python -m bench.sendpath --target raw            # the raw baseline, same sends

One instance (the same uvicorn command and environment as ``bench.run``), one sender socket and
one receiver socket in one conversation. Each ``message.send`` waits for its ack before the next
(``--gap`` seconds apart). Prints the server's CPU per send (``utime + stime`` of the process over
the timed sends: the send, its ack and two deliveries) and, with ``--idle``, the CPU per second
of the same instance left idle afterwards (its background loops). ``--profile FILE`` records the
timed sends with py-spy (``--gil``, raw format).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import websockets

from bench.cluster import ChatServer, RawServer, log, proc_cpu
from bench.run import parse_args as bench_args
from bench.scenarios import Bench


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=["chat", "raw"], default="chat")
    p.add_argument("--sends", type=int, default=3000)
    p.add_argument("--warm-up", type=int, default=200)
    p.add_argument("--gap", type=float, default=0.0, help="seconds between sends (0: back to back)")
    p.add_argument("--idle", type=float, default=0.0, help="then measure the idle instance this long")
    p.add_argument("--profile", default="", help="py-spy raw output of the timed sends")
    return p.parse_args(argv)


async def _sends(url: str, sender: str, receiver: str, conv: str, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    async with (
        websockets.connect(url, additional_headers={"Authorization": f"Token {sender}"}) as ws,
        websockets.connect(url, additional_headers={"Authorization": f"Token {receiver}"}) as rws,
    ):
        await ws.recv()
        await rws.recv()

        async def drain() -> None:
            async for _ in rws:
                pass

        reader = asyncio.create_task(drain())

        async def send(count: int, prefix: str) -> None:
            for i in range(count):
                rid = f"{prefix}{i}"
                await ws.send(
                    json.dumps({"type": "message.send", "id": rid, "conversation_id": conv, "body": "x" * 60})
                )
                while True:
                    frame = json.loads(await ws.recv())
                    if frame.get("id") == rid:
                        if frame["type"] != "ack":
                            raise RuntimeError(f"send failed: {frame}")
                        break
                if args.gap:
                    await asyncio.sleep(args.gap)

        await send(args.warm_up, "w")
        spy = None
        if args.profile:
            spy = subprocess.Popen(
                ["py-spy", "record", "-p", str(pid), "-r", "1000", "-f", "raw", "-o", args.profile, "--gil"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(1.0)
        cpu0, t0 = proc_cpu(pid), time.monotonic()
        await send(args.sends, "s")
        cpu1, t1 = proc_cpu(pid), time.monotonic()
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        out = {"sends": args.sends, "seconds": t1 - t0, "cpu_us_per_send": (cpu1 - cpu0) / args.sends * 1e6}
        if args.idle:
            await asyncio.sleep(args.idle)
            out["idle_cpu_ms_per_s"] = (proc_cpu(pid) - cpu1) / args.idle * 1000
        reader.cancel()
        return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    bench = Bench(
        bench_args(
            ["--receivers", "1", "--senders", "1", "--idle-counts", "0", "--storm-clients", "0", "--idle-warmup", "0"]
        )
    )
    bench.setup()
    try:
        assert bench.redis is not None
        env = bench.chat_env()
        server: ChatServer | RawServer = (
            ChatServer("uvicorn", "chat-0", env, bench.work)
            if args.target == "chat"
            else RawServer("raw-0", env, bench.work, bench.redis.port, Path(bench.tokens_path))
        )
        server.start()
        assert server.proc is not None
        try:
            out = asyncio.run(
                _sends(
                    server.ws_url,
                    bench.data["senders"][0][2],
                    bench.data["receivers"][0][2],
                    bench.data["conv_fanout"],
                    args,
                    server.proc.pid,
                )
            )
        finally:
            server.stop()
    finally:
        bench.teardown()
    rate = out["sends"] / out["seconds"]
    log(f"{args.target}: {out['sends']} sends in {out['seconds']:.1f} s ({rate:.0f}/s), "
        f"server CPU {out['cpu_us_per_send']:.0f} us per send"
        + (f"; idle afterwards {out['idle_cpu_ms_per_s']:.1f} ms of CPU per second" if args.idle else ""))  # fmt: skip


if __name__ == "__main__":
    main()
