"""A TCP proxy that delays every chunk by a fixed one-way delay, in both directions.

This kernel has no `sch_netem` (docs/performance.md), so a WAN link is simulated in user space:
each chunk read from one side is written to the other side `delay` seconds after it arrived,
in order. The round trip through the proxy is the real one plus twice the delay. There is no
bandwidth, jitter or loss model.

It reports what it saw as JSON lines on stdout, so the benchmark can count SSH connections and
request/response turns without touching releasegate's code:

    {"event": "listening", "address": "127.0.0.1", "port": 40123}
    {"event": "accept", "conn": 1, "t": 1234.5}
    {"event": "close", "conn": 1, "t": 1239.1, "up_bytes": …, "down_bytes": …, "turns": 42}
    {"event": "turn", "conn": 1, "t": 1234.6}     (with --turn-events: when each turn began)

A *turn* is a client→server chunk that follows server→client traffic: a request that had to
wait for an answer, so a lower bound of the latency-bound round trips on that connection.

Only a loopback address may be listened on, and only a loopback or private address (the
sandbox VPS) may be the target.

    python -m bench.delayproxy --listen 127.0.0.1:0 --target 10.231.16.2:22 --delay-ms 25
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import json
import sys
import time
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass
class LinkStats:
    """What one proxied connection carried."""

    conn: int
    up_bytes: int = 0  # client → server
    down_bytes: int = 0  # server → client
    turns: int = 0
    report_turns: bool = False  # emit a "turn" event with its time (per-stage counting)
    _last_direction: str = field(default="", repr=False)

    def saw(self, direction: str, size: int) -> None:
        if direction == "up":
            self.up_bytes += size
            if self._last_direction == "down":
                self.turns += 1
                if self.report_turns:
                    emit("turn", conn=self.conn, t=time.monotonic())
        else:
            self.down_bytes += size
        self._last_direction = direction


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def _carry(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: float,
    direction: str,
    stats: LinkStats,
) -> None:
    """Read chunks as they come; write each one `delay` after it arrived, in order."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def receive() -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                queue.put_nowait((time.monotonic() + delay, data))
                if not data:
                    return
                stats.saw(direction, len(data))
        except OSError:
            queue.put_nowait((time.monotonic() + delay, b""))

    async def send() -> None:
        try:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    await writer.drain()
                    return
                writer.write(data)
                await writer.drain()
        except OSError:
            return

    await asyncio.gather(receive(), send())


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:2250")
    return host, int(port)


def check_addresses(listen: tuple[str, int], target: tuple[str, int]) -> None:
    """Refuse anything but loopback to listen on and loopback/private targets."""
    try:
        lip = ipaddress.ip_address(listen[0])
        tip = ipaddress.ip_address(target[0])
    except ValueError as exc:
        raise SystemExit(f"delayproxy: use IP addresses, not names ({exc})") from None
    if not lip.is_loopback:
        raise SystemExit(f"delayproxy: listen on a loopback address only, not {lip}")
    if not (tip.is_loopback or tip.is_private):
        raise SystemExit(f"delayproxy: the target must be loopback or private, not {tip}")


async def serve(
    listen: tuple[str, int], target: tuple[str, int], delay: float, turn_events: bool = False
) -> None:
    numbers = itertools.count(1)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        stats = LinkStats(conn=next(numbers), report_turns=turn_events)
        emit("accept", conn=stats.conn, t=time.monotonic())
        try:
            server_r, server_w = await asyncio.open_connection(*target)
        except OSError as exc:
            emit("refused", conn=stats.conn, error=str(exc))
            client_w.close()
            return
        try:
            await asyncio.gather(
                _carry(client_r, server_w, delay, "up", stats),
                _carry(server_r, client_w, delay, "down", stats),
            )
        finally:
            for w in (client_w, server_w):
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()
            emit(
                "close",
                conn=stats.conn,
                t=time.monotonic(),
                up_bytes=stats.up_bytes,
                down_bytes=stats.down_bytes,
                turns=stats.turns,
            )

    server = await asyncio.start_server(handle, *listen)
    address, port = server.sockets[0].getsockname()[:2]
    emit("listening", address=address, port=port, delay_ms=delay * 1000)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_endpoint, required=True, help="127.0.0.1:PORT (0: any)")
    parser.add_argument("--target", type=_endpoint, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay per chunk")
    parser.add_argument("--turn-events", action="store_true", help="report each turn with its time")
    args = parser.parse_args(argv)
    if not 0 <= args.delay_ms <= 10_000:
        parser.error("--delay-ms must be between 0 and 10000")
    check_addresses(args.listen, args.target)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, args.target, args.delay_ms / 1000, args.turn_events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
