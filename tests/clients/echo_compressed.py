"""A `websockets` client with its default compression offer (what most
Python users send): it checks the server agreed on permessage-deflate,
sends MESSAGES messages of varied sizes and content, text and binary, and
checks each echo.

Usage: python echo_compressed.py URL MESSAGES
Prints one JSON object: {"extensions": [...], "echoed": int} or {"error": str}.
"""

import asyncio
import json
import random
import sys

import websockets


def message(i: int, rng: random.Random):
    size = rng.choice([0, 1, 10, 100, 300, 1000, 5000, 70000])
    words = ["chat", "room", "alice", "bob", "hello", "κόσμε", "🙂", "{", "}", '"']
    text = " ".join(rng.choice(words) for _ in range(size // 5 + 1))[:size]
    if i % 3 == 2:
        return text.encode() + bytes(rng.randrange(256) for _ in range(size % 97))
    return text


async def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2])
    rng = random.Random(7)
    try:
        async with websockets.connect(url, max_size=None) as ws:
            extensions = [type(e).__name__ for e in ws.protocol.extensions]
            for i in range(count):
                sent = message(i, rng)
                await ws.send(sent)
                got = await ws.recv()
                if got != sent:
                    print(json.dumps({"error": f"message {i} came back different"}))
                    return
            print(json.dumps({"extensions": extensions, "echoed": count}))
    except Exception as err:  # noqa: BLE001 - reported to the Rust test
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}))


asyncio.run(main())
