"""The stack's edge is the real Envoy: its process, its request ids in every log."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from embedviz.v1 import ingest_pb2
from services.stack import Stack
from tests.edge.client import grpc_web_call
from tests.support.world import Stubs


@pytest.fixture(scope="module")
async def stubs(stack: Stack) -> AsyncIterator[Stubs]:
    s = Stubs(stack)
    yield s
    await s.close()


def _cmdline(pid: int | str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def test_the_edge_is_envoy_and_no_python_edge_runs(stack: Stack) -> None:
    edge = stack._procs["edge"]
    argv = _cmdline(edge.pid)
    assert Path(argv[0]).name == "envoy", argv
    assert str(stack.data_dir / "envoy.yaml") in argv
    for pid in filter(str.isdigit, os.listdir("/proc")):
        assert "gateway.edge" not in " ".join(_cmdline(pid)), f"a Python edge is running: {_cmdline(pid)}"


async def test_one_request_id_in_the_reply_envoy_s_access_log_and_the_service_s_log(stack: Stack, stubs: Stubs) -> None:
    person = await stubs.sign_up("request-id")
    async with aiohttp.ClientSession() as session:
        reply = await grpc_web_call(session, stack.edge_url, "/embedviz.v1.IngestService/ListProjects",
                                    ingest_pb2.ListProjectsRequest().SerializeToString(), token=person.token)
    assert reply.grpc_status == 0
    request_id = reply.headers["x-request-id"]

    def found() -> tuple[dict[str, object] | None, str | None]:
        access = next(
            (
                json.loads(line)
                for line in (stack.logs_dir / "edge.log").read_text(errors="replace").splitlines()
                if line.startswith("{") and request_id in line
            ),
            None,
        )
        service = next((line for line in (stack.logs_dir / "ingest.log").read_text(errors="replace").splitlines()
                        if f"[{request_id}]" in line), None)
        return access, service

    for _ in range(50):  # Envoy flushes its access log about once a second
        access, service = found()
        if access and service:
            break
        await asyncio.sleep(0.2)
    assert access is not None, "no access-log line with the request id"
    assert access["path"] == "/embedviz.v1.IngestService/ListProjects" and access["upstream"] == "ingest"
    assert service is not None and "/embedviz.v1.IngestService/ListProjects OK" in service, service

