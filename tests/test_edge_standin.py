"""The stand-in edge (python -m gateway.edge) against real sockets: a grpc.aio upstream, a
JWKS server with a generated EC key, and the edge itself as a subprocess reading envoy.yaml.

The conformance checks in tests/edge/conformance.py run here in full; the same checks run
against any edge (Envoy included) with tests/edge/edge_url_suite.py and EDGE_URL.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.edge.client import grpc_web_call
from tests.edge.conformance import CHECKS, EdgeTarget, StreamProbe, checks_for
from tests.edge.fake_upstream import FakeServices, free_port
from tests.edge.tokens import TokenMint, new_ec_key, public_jwk

REPO = Path(__file__).resolve().parents[1]
STREAM_GAP_S = 4.0


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"edge exited early: {proc.stdout.read().decode() if proc.stdout else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"edge did not listen on {port}")


@pytest.fixture(scope="module")
def mint() -> TokenMint:
    return TokenMint(key=new_ec_key(), kid="key-1")


@pytest.fixture(scope="module")
def services(mint: TokenMint) -> Iterator[FakeServices]:
    fake = FakeServices({"keys": [public_jwk(mint.key, mint.kid)]}).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def web_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    (dist / "index.html").write_text("<!doctype html><title>embedviz</title><div id=app></div>")
    (dist / "assets").mkdir()
    (dist / "assets" / "app.js").write_text("console.log('embedviz')")
    return dist


def _start_edge(services: FakeServices, web_dist: Path, tmp: Path, **overrides: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    upstream = f"127.0.0.1:{services.grpc_port}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "build/gen/python"), os.environ.get("PYTHONPATH", "")]),
        "EMBEDVIZ_EDGE_ADDR": f"127.0.0.1:{port}",
        "EMBEDVIZ_ENVOY_CONFIG": str(REPO / "envoy.yaml"),
        "EMBEDVIZ_AUTH_ADDR": upstream,
        "EMBEDVIZ_INGEST_ADDR": upstream,
        "EMBEDVIZ_EMBEDDING_ADDR": upstream,
        "EMBEDVIZ_PROJECTION_ADDR": upstream,
        "EMBEDVIZ_JWKS_URL": services.jwks_url,
        "EMBEDVIZ_WEB_DIST": str(web_dist),
        **overrides,
    }
    log = (tmp / f"edge-{port}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.edge"], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    _wait_for_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def edge_url(services: FakeServices, web_dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = _start_edge(services, web_dist, tmp_path_factory.mktemp("edge"))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def target(edge_url: str, mint: TokenMint) -> EdgeTarget:
    return EdgeTarget(
        edge_url=edge_url,
        protected_path="/embedviz.v1.IngestService/GetProject",
        mint=mint,
        stream=StreamProbe("/embedviz.v1.IngestService/WatchDataset",
                           json.dumps({"count": 3, "gap_s": STREAM_GAP_S}).encode(), 3, STREAM_GAP_S),
        echo_path="/embedviz.v1.IngestService/GetProject",
        echo_public_path="/embedviz.v1.AuthService/Login",
        strict_trailers_only=True,
    )


def test_every_conformance_check_applies_to_the_standin(target: EdgeTarget) -> None:
    assert checks_for(target) == list(CHECKS)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(CHECKS))
async def test_edge_conformance(name: str, target: EdgeTarget) -> None:
    fn, _ = CHECKS[name]
    async with aiohttp.ClientSession() as session:
        await fn(target, session)


@pytest.mark.asyncio
async def test_rotated_key_is_fetched_on_unknown_kid(target: EdgeTarget, services: FakeServices) -> None:
    rotated = TokenMint(key=new_ec_key(), kid="key-2")
    services.jwks["keys"].append(public_jwk(rotated.key, rotated.kid))
    async with aiohttp.ClientSession() as session:
        reply = await grpc_web_call(session, target.edge_url, target.protected_path, token=rotated.valid())
    assert reply.grpc_status == 0, (reply.grpc_status, reply.grpc_message)


@pytest.mark.asyncio
async def test_auth_failure_message_says_what_was_wrong(target: EdgeTarget, mint: TokenMint) -> None:
    async with aiohttp.ClientSession() as session:
        missing = await grpc_web_call(session, target.edge_url, target.protected_path)
        expired = await grpc_web_call(session, target.edge_url, target.protected_path, token=mint.expired())
    assert missing.grpc_message == "Jwt is missing"
    assert expired.grpc_message == "Jwt is expired"


@pytest.mark.asyncio
async def test_web_client_is_served_with_spa_fallback(target: EdgeTarget) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(target.edge_url + "/assets/app.js") as resp:
            assert resp.status == 200
            assert "embedviz" in await resp.text()
        async with session.get(target.edge_url + "/projects/p1/datasets/d1") as resp:
            assert resp.status == 200
            assert "<div id=app>" in await resp.text()
        async with session.get(target.edge_url + "/../../etc/passwd") as resp:
            assert "root:" not in await resp.text()


@pytest.mark.asyncio
async def test_plain_grpc_is_refused_with_a_pointer_to_the_services(target: EdgeTarget) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(target.edge_url + "/grpc.health.v1.Health/Check", data=b"\0\0\0\0\0",
                                headers={"Content-Type": "application/grpc"}) as resp:
            assert resp.status == 415
            assert "directly" in await resp.text()


@pytest.mark.asyncio
async def test_unreachable_service_is_unavailable_and_missing_build_says_make_web(
    mint: TokenMint, services: FakeServices, tmp_path: Path
) -> None:
    empty_dist = tmp_path / "dist"
    empty_dist.mkdir()
    proc, url = _start_edge(services, empty_dist, tmp_path, EMBEDVIZ_PROJECTION_ADDR=f"127.0.0.1:{free_port()}")
    try:
        async with aiohttp.ClientSession() as session:
            reply = await grpc_web_call(session, url, "/embedviz.v1.ProjectionService/GetProjection", token=mint.valid())
            async with session.get(url + "/") as resp:
                page = await resp.text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert reply.http_status == 200
    assert reply.grpc_status == 14, (reply.grpc_status, reply.grpc_message)
    assert reply.headers.get("grpc-status") == "14" and reply.trailers.get("grpc-status") == "14"
    assert "make web" in page
