"""grpcurl against the running services and through the Envoy edge: reflection lists every
service (through the edge: the whole public API), health says SERVING, and a real call
works with a token and fails without one."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from services.stack import Stack

GRPCURL = str(Path(sys.executable).parent / "grpcurl")

PUBLIC_API = {"embedviz.v1.AuthService", "embedviz.v1.IngestService", "embedviz.v1.EmbeddingService",
              "embedviz.v1.ProjectionService"}
EXPECTED = {
    # the edge routes reflection to auth, so auth's reflection describes the public API
    "auth": PUBLIC_API,
    "ingest": {"embedviz.v1.IngestService", "embedviz.v1.IngestInternalService"},
    "embedding": {"embedviz.v1.EmbeddingService", "embedviz.v1.EmbeddingInternalService"},
    "projection": {"embedviz.v1.ProjectionService"},
}


def grpcurl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"grpcurl {' '.join(args)} failed: {result.stderr}")
    return result


@pytest.mark.parametrize("service", sorted(EXPECTED))
def test_reflection_lists_the_service_and_health(stack: Stack, service: str) -> None:
    listed = set(grpcurl(stack.addrs[service], "list").stdout.split())
    assert EXPECTED[service] <= listed
    assert "grpc.health.v1.Health" in listed
    own = {name for name in EXPECTED[service] if name.startswith(f"embedviz.v1.{service.capitalize()}")}
    for name in ["", *sorted(own)]:
        body = json.dumps({"service": name})
        answer = json.loads(grpcurl("-d", body, stack.addrs[service], "grpc.health.v1.Health/Check").stdout)
        assert answer == {"status": "SERVING"}


def test_grpcurl_signs_up_and_lists_projects(stack: Stack) -> None:
    signup = json.dumps({"email": f"cli-{uuid.uuid4().hex[:8]}@example.org", "password": "correct horse battery"})
    session = json.loads(grpcurl("-d", signup, stack.addrs["auth"], "embedviz.v1.AuthService/SignUp").stdout)["session"]
    token = session.get("accessToken") or session["access_token"]
    created = json.loads(
        grpcurl(
            "-H", f"authorization: Bearer {token}",
            "-d", json.dumps({"project": {"displayName": "from grpcurl"}}),
            stack.addrs["ingest"], "embedviz.v1.IngestService/CreateProject",
        ).stdout
    )
    listed = json.loads(
        grpcurl(
            "-H", f"authorization: Bearer {token}", stack.addrs["ingest"], "embedviz.v1.IngestService/ListProjects"
        ).stdout
    )
    assert [p["name"] for p in listed["projects"]] == [created["name"]]
    denied = grpcurl(stack.addrs["ingest"], "embedviz.v1.IngestService/ListProjects", check=False)
    assert denied.returncode != 0 and "Unauthenticated" in denied.stderr


def _edge(stack: Stack) -> str:
    return stack.edge_url.removeprefix("http://")


def test_grpcurl_through_the_edge_lists_and_describes_the_whole_public_api(stack: Stack) -> None:
    listed = set(grpcurl(_edge(stack), "list").stdout.split())
    assert PUBLIC_API <= listed
    assert not {name for name in listed if name.endswith("InternalService")}, listed
    described = grpcurl(_edge(stack), "describe", "embedviz.v1.ProjectionService").stdout
    assert "rpc StreamPoints" in described and "rpc SearchPoints" in described
    message = grpcurl(_edge(stack), "describe", "embedviz.v1.CreateProjectRequest").stdout
    assert "project" in message


def test_grpcurl_calls_through_the_edge_with_a_bearer_token(stack: Stack) -> None:
    signup = json.dumps({"email": f"edge-cli-{uuid.uuid4().hex[:8]}@example.org", "password": "correct horse battery"})
    session = json.loads(grpcurl("-d", signup, _edge(stack), "embedviz.v1.AuthService/SignUp").stdout)["session"]
    token = session.get("accessToken") or session["access_token"]
    created = json.loads(
        grpcurl(
            "-H",
            f"authorization: Bearer {token}",
            "-d",
            json.dumps({"project": {"displayName": "via envoy"}}),
            _edge(stack),
            "embedviz.v1.IngestService/CreateProject",
        ).stdout
    )
    listed = json.loads(
        grpcurl("-H", f"authorization: Bearer {token}", _edge(stack), "embedviz.v1.IngestService/ListProjects").stdout
    )
    assert [p["name"] for p in listed["projects"]] == [created["name"]]
    denied = grpcurl(_edge(stack), "embedviz.v1.IngestService/ListProjects", check=False)
    assert denied.returncode != 0 and "Unauthenticated" in denied.stderr and "Jwt is missing" in denied.stderr
    internal = grpcurl("-H", f"authorization: Bearer {token}", "-d", "{}", _edge(stack),
                       "embedviz.v1.IngestInternalService/GetProjectRole", check=False)
    assert internal.returncode != 0 and "Unimplemented" in internal.stderr
