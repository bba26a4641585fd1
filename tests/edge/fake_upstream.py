"""Real servers for an edge test without the real services: a grpc.aio server and a JWKS.

The gRPC server answers grpc health, echoes the metadata it received as JSON on any unary
method, and on `Watch*`/`Stream*` methods sends `count` messages `gap_s` apart (request
JSON `{"count": n, "gap_s": s}`). Both run on their own event loop in a thread, so sync
pytest fixtures can start them once per module.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
import grpc.aio
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    metadata = {k: (v if isinstance(v, str) else v.hex()) for k, v in context.invocation_metadata() or ()}
    return json.dumps({"request": request.decode("latin-1"), "metadata": metadata}).encode()


async def _ticks(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    spec = json.loads(request or b"{}")
    for i in range(int(spec.get("count", 3))):
        if i:
            await asyncio.sleep(float(spec.get("gap_s", 1.0)))
        yield json.dumps({"tick": i}).encode()


class _AnyMethod(grpc.GenericRpcHandler):
    """Every embedviz method: streams for Watch*/Stream*, echo for the rest (bytes in, bytes out)."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method  # type: ignore[attr-defined]
        if not method.startswith("/embedviz.v1."):
            return None
        name = method.rsplit("/", 1)[-1]
        if name.startswith(("Watch", "Stream")):
            return grpc.unary_stream_rpc_method_handler(_ticks)
        return grpc.unary_unary_rpc_method_handler(_echo)


class FakeServices:
    """A grpc.aio server and a JWKS HTTP server on free ports, in a background thread."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.grpc_port = free_port()
        self.jwks_port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self.jwks_fetches = 0

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.jwks_port}/.well-known/jwks.json"

    def _run(self, coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
        asyncio.run_coroutine_threadsafe(coro(), self._loop).result(timeout=30)

    def start(self) -> FakeServices:
        self._thread.start()
        self._run(self._start)
        return self

    async def _start(self) -> None:
        server = grpc.aio.server()
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        server.add_generic_rpc_handlers((_AnyMethod(),))
        server.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
        await server.start()
        self._server = server

        async def jwks(_: web.Request) -> web.Response:
            self.jwks_fetches += 1
            return web.json_response(self.jwks)

        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", jwks)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.jwks_port).start()

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                await self._server.stop(grace=1)
            if self._runner is not None:
                await self._runner.cleanup()

        self._run(_stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
