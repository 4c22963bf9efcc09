"""Clients of Python's `websockets` library that each send one message
larger than the server's limit, as fast as they can, and report the close
code and reason they received (or what went wrong instead).

Usage: python too_large.py URL CLIENTS BYTES COMPRESSION(on|off)
Prints one JSON object per client: {"code": int, "reason": str} or
{"error": str}.
"""

import asyncio
import json
import sys

import websockets


async def client(url: str, size: int, compression: bool) -> dict:
    options = {} if compression else {"compression": None}
    # Not `async with`: leaving that block after the server closed can
    # raise from asyncio's transport (CPython 3.11's `_force_close` on a
    # transport already lost), hiding the close the client did receive.
    ws = await websockets.connect(url, max_size=None, **options)
    try:
        await ws.send(b"\x07" * size)
        # Wait for the server's close; a reply would be a failure.
        reply = await ws.recv()
        return {"error": f"got a reply of {len(reply)} bytes"}
    except websockets.ConnectionClosed as closed:
        if closed.rcvd is None:
            return {"error": f"no close frame received: {closed}"}
        return {"code": closed.rcvd.code, "reason": closed.rcvd.reason}
    except Exception as err:  # noqa: BLE001 - reported to the Rust test
        return {"error": f"{type(err).__name__}: {err}"}


async def main() -> None:
    url, clients, size, compression = sys.argv[1:5]
    results = await asyncio.gather(
        *(client(url, int(size), compression == "on") for _ in range(int(clients)))
    )
    for result in results:
        print(json.dumps(result))


asyncio.run(main())
