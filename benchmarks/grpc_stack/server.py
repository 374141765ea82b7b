"""An empty grpc.aio server on uvloop, in a process of its own: a unary method and a
bidirectional stream that answer every message with one byte.

It is built as a payauth worker builds its server (`SERVER_OPTIONS`, generic handlers only),
and it takes its gRPC core settings from the environment it is started with, which is what
the benchmark varies. Run as `python -m benchmarks.grpc_stack.server PORT_FILE`: it writes the
port it serves on to PORT_FILE and serves until killed.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import uvloop

from payauth.server.app import SERVER_OPTIONS

SERVICE = "bench.Empty"
ANSWER = b"\x01"


async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    """The unary method: the fixed answer."""
    return ANSWER


async def bidi(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
    """The stream: one fixed answer per message, written as payauth's stream writes."""
    async for _ in requests:
        await context.write(ANSWER)


async def serve(port_file: Path) -> None:
    """Serve on a free loopback port until killed."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.stream_stream_rpc_method_handler(bidi),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(Path(sys.argv[1])))
