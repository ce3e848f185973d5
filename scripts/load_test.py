"""Load test for ``recforge-serve``: clients on raw HTTP/1.1 keep-alive connections (asyncio, standard library
only), one level after another; closed loop by default, open loop with ``--rate``.

    python scripts/load_test.py --url http://127.0.0.1:8000 --bundle logs/runs/<time>/model \
        --concurrency 1 10 50 --requests 20000 --seconds 20 [--json]
    python scripts/load_test.py --url ... --bundle ... --concurrency 50 --rate 100 200 400   # open loop

Closed loop (the default) measures capacity: each connection sends its next request as soon as the last is answered,
so the service is always saturated and latency is about concurrency / throughput. Open loop (``--rate``) measures the
latency users see at a given load: requests arrive as a Poisson process of that many a second and take the next free
one of the ``--concurrency`` connections, and a request's latency runs from its arrival (time spent waiting for a
connection counts, so a saturated service shows as growing latency, not as a lower request rate).

Each level runs until ``--requests`` requests are done or ``--seconds`` have passed (whichever comes first)
and reports throughput (req/s), p50/p99/max latency (ms, from sending a request to reading its whole
response) and the error count (non-2xx, broken connections, timeouts). Users are drawn at random from the
bundle's user ids (``--bundle``) or ``--users``; a share ``--unknown-share`` are unknown ids (popularity
fallback). Run it as its own process: on a small machine it competes with the server for the same cores,
so the numbers are a lower bound for what the service does alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from urllib.parse import urlsplit

import numpy as np


def load_users(bundle: str | None, users: str | None) -> list:
    if users:
        return [int(u) if u.strip().lstrip("-").isdigit() else u.strip() for u in users.split(",") if u.strip()]
    if bundle:
        import pandas as pd

        return pd.read_parquet(f"{bundle}/users.parquet")["user"].tolist()
    return []


class Client:
    """One keep-alive connection sending requests one after another."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = None

    async def post(self, path: str, body: bytes) -> int:
        """Send one POST and read the whole response; returns the status code."""
        if self.writer is None:
            await self.connect()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        return await asyncio.wait_for(self._read_response(), self.timeout)

    async def _read_response(self) -> int:
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.split(b"\r\n")
        status = int(lines[0].split()[1])
        length, close, chunked = 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value == b"close":
                close = True
            elif name == b"transfer-encoding" and b"chunked" in value:
                chunked = True
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)  # the chunk and its CRLF
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        if close:
            await self.close()
        return status


async def run_level(host: str, port: int, path: str, concurrency: int, max_requests: int, seconds: float,
                    users: list, unknown_share: float, k: int, timeout: float, seed: int,
                    rate: float | None = None) -> dict:
    """One level: ``concurrency`` connections, closed loop (each sends its next request when its last one is
    answered) or, with ``rate``, open loop (requests arrive as a Poisson process of ``rate`` a second and take the
    next free connection; a request's latency runs from its arrival, so time spent waiting for a connection counts)."""
    rng = random.Random(seed)
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + seconds

    def body_for() -> bytes:
        if not users or rng.random() < unknown_share:
            user = f"unknown-{rng.randrange(1 << 30)}"
        else:
            user = users[rng.randrange(len(users))]
        return json.dumps({"user": user, "k": k}).encode()

    # requests are prepared up front, so the client spends its CPU on the connection, not on JSON
    bodies = [body_for() for _ in range(min(max_requests, 8192))]

    async def send(client: Client, body: bytes, since: float) -> None:
        nonlocal errors
        try:
            status = await client.post(path, body)
            ok = 200 <= status < 300
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError):
            ok = False
            await client.close()
        latencies.append(time.perf_counter() - since)
        if not ok:
            errors += 1

    async def closed_worker() -> None:
        nonlocal issued
        client = Client(host, port, timeout)
        try:
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                await send(client, bodies[issued % len(bodies)], time.perf_counter())
        finally:
            await client.close()

    queue: asyncio.Queue = asyncio.Queue()

    async def arrivals() -> None:
        nonlocal issued
        due = time.perf_counter()
        while issued < max_requests and due < deadline:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            issued += 1
            queue.put_nowait((due, bodies[issued % len(bodies)]))
            due += rng.expovariate(rate)
        for _ in range(concurrency):
            queue.put_nowait(None)

    async def open_worker() -> None:
        client = Client(host, port, timeout)
        try:
            while (request := await queue.get()) is not None:
                due, body = request
                await send(client, body, due)
        finally:
            await client.close()

    started = time.perf_counter()
    if rate:
        await asyncio.gather(arrivals(), *(open_worker() for _ in range(concurrency)))
    else:
        await asyncio.gather(*(closed_worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {"concurrency": concurrency, "offered_rps": rate, "requests": len(latencies), "errors": errors,
            "seconds": round(elapsed, 3),
            "throughput_rps": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "max_ms": round(float(ms.max()), 3), "mean_ms": round(float(ms.mean()), 3)}


async def main_async(args: argparse.Namespace) -> list[dict]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    users = load_users(args.bundle, args.users)
    results = []
    levels = [(c, r) for c in args.concurrency for r in (args.rate or [None])]
    for i, (level, rate) in enumerate(levels):
        if args.warmup:
            await run_level(host, port, args.path, level, args.warmup, args.seconds, users, args.unknown_share,
                            args.k, args.timeout, args.seed + 1000 + i)
        result = await run_level(host, port, args.path, level, args.requests, args.seconds, users,
                                 args.unknown_share, args.k, args.timeout, args.seed + i, rate)
        results.append(result)
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            offered = f"offered {rate:g} req/s, " if rate else ""
            print(f"{offered}concurrency {result['concurrency']:>4}: {result['requests']:>7} requests in "
                  f"{result['seconds']:6.2f} s = {result['throughput_rps']:8.1f} req/s, "
                  f"p50 {result['p50_ms']:7.2f} ms, "
                  f"p99 {result['p99_ms']:7.2f} ms, max {result['max_ms']:7.2f} ms, errors {result['errors']}",
                  flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL (loopback)")
    parser.add_argument("--path", default="/recommend")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50], help="levels (default 1 10 50)")
    parser.add_argument("--requests", type=int, default=20000, help="at most this many requests per level")
    parser.add_argument("--seconds", type=float, default=20.0, help="at most this long per level")
    parser.add_argument("--rate", type=float, nargs="+",
                        help="open loop: requests arrive as a Poisson process of this many a second, over the level's "
                             "connections (each rate a level; latency counts the wait for a free connection); "
                             "default: closed loop, each connection sends again as soon as it is answered")
    parser.add_argument("--warmup", type=int, default=0, help="unmeasured requests before each level")
    parser.add_argument("--bundle", help="model bundle directory: known users are drawn from its users.parquet")
    parser.add_argument("--users", help="comma-separated known user ids (instead of --bundle)")
    parser.add_argument("--unknown-share", type=float, default=0.1, help="share of requests for unknown users")
    parser.add_argument("-k", "--k", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds (an error)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON line per level")
    args = parser.parse_args(argv)
    if any(c < 1 for c in args.concurrency) or args.requests < 1 or args.seconds <= 0:
        parser.error("--concurrency levels and --requests must be >= 1 and --seconds > 0")
    if args.rate and any(r <= 0 for r in args.rate):
        parser.error("--rate values must be > 0 (requests a second)")
    if not 0 <= args.unknown_share <= 1:
        parser.error(f"--unknown-share {args.unknown_share} must be in [0, 1]")
    results = asyncio.run(main_async(args))
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
