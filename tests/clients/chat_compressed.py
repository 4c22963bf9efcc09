"""`websockets` clients on the chat, half of them with their default
compression offer and half without: each sends MESSAGES binary messages of
varied sizes at once, and each checks that it got every other client's
messages, intact and in the order they were sent (the chat forwards a
binary message as it is).

Usage: python chat_compressed.py URL CLIENTS MESSAGES
Prints one JSON object: {"clients": int, "compressed": int, "received": int}
or {"error": str}.
"""

import asyncio
import json
import random
import sys

import websockets


def payload(sender: int, i: int) -> bytes:
    rng = random.Random(sender * 100_003 + i)
    size = rng.choice([8, 100, 255, 256, 1000, 5000, 40000])
    words = [b"chat ", b"room ", b"alice ", b"bob ", b"hello ", b"\xce\xba\xcf\x8c "]
    body = b"".join(rng.choice(words) for _ in range(size // 4 + 1))[:size]
    return sender.to_bytes(2, "big") + i.to_bytes(4, "big") + body


async def client(url: str, n: int, clients: int, messages: int, ready, go):
    compression = "deflate" if n % 2 == 0 else None
    async with websockets.connect(
        f"{url}?name=c{n}", max_size=None, compression=compression
    ) as ws:
        await ws.recv()  # the greeting
        ready.set()
        await go.wait()

        async def send():
            for i in range(messages):
                await ws.send(payload(n, i))

        sending = asyncio.create_task(send())
        expected = {s: 0 for s in range(clients) if s != n}
        received = 0
        while received < (clients - 1) * messages:
            msg = await ws.recv()
            if isinstance(msg, str):
                continue  # join notices
            sender = int.from_bytes(msg[:2], "big")
            i = int.from_bytes(msg[2:6], "big")
            if sender == n or i != expected[sender] or msg != payload(sender, i):
                raise AssertionError(
                    f"client {n}: from {sender} got message {i}, "
                    f"expected {expected.get(sender)} intact"
                )
            expected[sender] += 1
            received += 1
        await sending
        return bool(ws.protocol.extensions), received


async def main() -> None:
    url, clients, messages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    try:
        readies = [asyncio.Event() for _ in range(clients)]
        go = asyncio.Event()
        tasks = []
        for n in range(clients):
            tasks.append(
                asyncio.create_task(client(url, n, clients, messages, readies[n], go))
            )
            await readies[n].wait()
        go.set()
        results = await asyncio.gather(*tasks)
        print(
            json.dumps(
                {
                    "clients": clients,
                    "compressed": sum(1 for c, _ in results if c),
                    "received": sum(r for _, r in results),
                }
            )
        )
    except Exception as err:  # noqa: BLE001 - reported to the Rust test
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}))


asyncio.run(main())
