"""The server bootstrap watches its background tasks: a worker loop that dies takes the
service out of rotation (health NOT_SERVING) and the process with it (an error, so its
supervisor restarts it), instead of a service that answers SERVING and does no work."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.server import BackgroundTaskDied, serve_until_signalled


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_background_task_that_dies_stops_serving_and_fails_the_process() -> None:
    server = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    addr = f"127.0.0.1:{_free_port()}"
    statuses: list[int] = []

    async def consumer_loop(stop: asyncio.Event) -> None:
        async with grpc.aio.insecure_channel(addr) as channel:
            statuses.append((await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())).status)
        raise ConnectionError("the consumer lost its subscription for good")

    async def quiet_worker(stop: asyncio.Event) -> None:
        await stop.wait()

    async def finished_warm_up(stop: asyncio.Event) -> None:
        return None  # ends on purpose: not a failure

    with pytest.raises(BackgroundTaskDied, match="consumer_loop died: ConnectionError"):
        await asyncio.wait_for(
            serve_until_signalled(server, addr, health_servicer, ["test.Service"],
                                  background=[finished_warm_up, quiet_worker, consumer_loop], grace_seconds=1),
            timeout=20,
        )
    assert statuses == [health_pb2.HealthCheckResponse.SERVING]  # it was serving while the loop lived
    with pytest.raises(grpc.aio.AioRpcError):  # and serves nothing now
        async with grpc.aio.insecure_channel(addr) as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
