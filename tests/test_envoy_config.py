"""envoy.yaml, the production edge: strictly valid against Envoy's own v3 schema (the
xds-protos package, in .venv-envoy) and saying what docs/architecture.md says."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.edge.config import EdgeConfig, load_edge_config

REPO = Path(__file__).resolve().parents[1]
ENVOY_YAML = REPO / "envoy.yaml"
ENVOY_PYTHON = REPO / ".venv-envoy" / "bin" / "python"
CHECKER = REPO / "tests" / "edge" / "check_envoy_schema.py"

PUBLIC_PREFIXES = [
    "/embedviz.v1.AuthService/SignUp",
    "/embedviz.v1.AuthService/Login",
    "/embedviz.v1.AuthService/RefreshSession",
    "/embedviz.v1.AuthService/ExchangeApiKey",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
]
SERVICE_CLUSTERS = {"AuthService": "auth", "IngestService": "ingest", "EmbeddingService": "embedding", "ProjectionService": "projection"}
STREAMING_METHODS = [
    "/embedviz.v1.IngestService/WatchDataset",
    "/embedviz.v1.EmbeddingService/WatchEmbedding",
    "/embedviz.v1.ProjectionService/WatchProjection",
    "/embedviz.v1.ProjectionService/StreamPoints",
    "/embedviz.v1.ProjectionService/ExportProjection",
]


def _schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    if not ENVOY_PYTHON.exists():
        pytest.fail(f"{ENVOY_PYTHON} is missing: run `make envoy-venv` (a venv with xds-protos and pyyaml)")
    return subprocess.run([str(ENVOY_PYTHON), str(CHECKER), str(path)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ENVOY_YAML.read_text())
    return loaded


@pytest.fixture(scope="module")
def edge() -> EdgeConfig:
    return load_edge_config(ENVOY_YAML)


def _hcm(doc: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _routes(doc: dict[str, Any]) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = _hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _proto_services() -> dict[str, list[str]]:
    """service name -> its methods, read from protos/embedviz/v1/*.proto."""
    services: dict[str, list[str]] = {}
    for proto in sorted((REPO / "protos" / "embedviz" / "v1").glob("*.proto")):
        current = None
        for line in proto.read_text().splitlines():
            if m := re.match(r"\s*service\s+(\w+)", line):
                current = m.group(1)
                services[current] = []
            elif (m := re.match(r"\s*rpc\s+(\w+)", line)) and current:
                services[current].append(m.group(1))
    return services


def test_envoy_yaml_is_valid_against_envoy_v3_schema() -> None:
    result = _schema_check(ENVOY_YAML)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_schema_check_catches_an_unknown_field(tmp_path: Path, doc: dict[str, Any]) -> None:
    broken = yaml.safe_load(ENVOY_YAML.read_text())
    _hcm(broken)["http_filters"][2]["typed_config"]["providers"]["embedviz_auth"]["audience"] = ["typo"]
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = _schema_check(path)
    assert result.returncode == 1 and "audience" in result.stdout, result.stdout + result.stderr


def test_filters_run_cors_grpc_web_jwt_router(doc: dict[str, Any]) -> None:
    names = [f["name"] for f in _hcm(doc)["http_filters"]]
    assert names == ["envoy.filters.http.cors", "envoy.filters.http.grpc_web", "envoy.filters.http.jwt_authn", "envoy.filters.http.router"]


def test_listener_speaks_http1_and_http2_on_8080(doc: dict[str, Any], edge: EdgeConfig) -> None:
    assert edge.listen_port == 8080
    assert _hcm(doc)["codec_type"] == "AUTO"
    assert doc["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}


def test_every_public_service_is_routed_to_its_cluster(edge: EdgeConfig) -> None:
    services = _proto_services()
    public = [s for s in services if not s.endswith("InternalService")]
    assert sorted(public) == sorted(SERVICE_CLUSTERS), "a new public service needs a route in envoy.yaml"
    for service, methods in services.items():
        for method in methods:
            route = edge.route_for(f"/embedviz.v1.{service}/{method}", is_grpc=True)
            assert route is not None
            if service.endswith("InternalService"):
                assert route.cluster is None and route.direct_status == 404, f"{service} must never be routed"
            else:
                assert route.cluster == SERVICE_CLUSTERS[service], (service, route)
                assert edge.clusters[route.cluster].http2


def test_no_internal_service_is_routed(edge: EdgeConfig) -> None:
    for service in ("AuthInternalService", "IngestInternalService", "EmbeddingInternalService", "ProjectionInternalService", "FooInternalService"):
        route = edge.route_for(f"/embedviz.v1.{service}/Anything", is_grpc=True)
        assert route is not None and route.cluster is None, route
        route = edge.route_for(f"/embedviz.v1.{service}/Anything", is_grpc=False)
        assert route is not None and route.cluster is None, "must not fall through to the web cluster"


def test_unknown_grpc_paths_do_not_reach_the_web_cluster(edge: EdgeConfig) -> None:
    route = edge.route_for("/some.other.Service/Method", is_grpc=True)
    assert route is not None and route.direct_status == 404
    web = edge.route_for("/projects/p1", is_grpc=False)
    assert web is not None and web.cluster == "web"


def test_grpc_routes_have_no_timeout(doc: dict[str, Any], edge: EdgeConfig) -> None:
    by_name = {r["name"]: r for r in _routes(doc)}
    for path in STREAMING_METHODS:
        route = edge.route_for(path, is_grpc=True)
        assert route is not None
        action = by_name[route.name]["route"]
        assert action["timeout"] == "0s" and action["idle_timeout"] == "0s", path
        assert action["max_stream_duration"]["grpc_timeout_header_max"] == "0s"
    for r in _routes(doc):
        if "route" in r and r["route"]["cluster"] != "web":
            assert r["route"]["timeout"] == "0s", r["name"]


def test_public_paths_are_exactly_the_documented_list(edge: EdgeConfig) -> None:
    assert edge.public_prefixes() == PUBLIC_PREFIXES
    rules = edge.jwt_rules
    assert [r.requires_provider for r in rules[:-1]] == [None] * len(PUBLIC_PREFIXES)
    catch_all = rules[-1]
    assert catch_all.requires_provider == "embedviz_auth"
    for path in ("/embedviz.v1.IngestService/GetProject", "/embedviz.v1.IngestInternalService/StreamRows", "/other.v2.Thing/Do"):
        assert edge.jwt_rule_for(path, is_grpc=False) is catch_all, path  # whatever the content-type
    for path in ("/", "/index.html", "/assets/index-3f2a.js", "/projects/p1/datasets/d1"):
        assert edge.jwt_rule_for(path, is_grpc=False) is None, f"{path}: the web client must load without a token"
    assert edge.jwt_rule_for("/embedviz.v1.AuthService/Logout", is_grpc=True) is catch_all
    assert edge.jwt_rule_for("/embedviz.v1.AuthService/GetCurrentUser", is_grpc=True) is catch_all


def test_jwt_provider_matches_the_auth_service(doc: dict[str, Any], edge: EdgeConfig) -> None:
    provider = edge.providers["embedviz_auth"]
    assert provider.issuer == "embedviz-auth"
    assert provider.audiences == ("embedviz",)
    assert provider.forward and provider.forward_payload_header == "x-jwt-payload"
    jwt_cfg = _hcm(doc)["http_filters"][2]["typed_config"]
    remote = jwt_cfg["providers"]["embedviz_auth"]["remote_jwks"]
    assert remote["http_uri"] == {"uri": "http://auth:8081/.well-known/jwks.json", "cluster": "auth_http", "timeout": "5s"}
    assert remote["cache_duration"] and "async_fetch" in remote
    assert edge.clusters["auth_http"].port == 8081 and not edge.clusters["auth_http"].http2


def test_client_supplied_jwt_payload_is_removed_before_any_filter(edge: EdgeConfig) -> None:
    assert "x-jwt-payload" in edge.headers_removed_early


def test_cors_allows_grpc_web_and_exposes_status(edge: EdgeConfig) -> None:
    cors = edge.cors
    assert cors is not None and cors.allows_origin("http://localhost:5173")
    allowed = {h.strip() for h in cors.allow_headers.split(",")}
    assert {"authorization", "content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "connect-protocol-version"} <= allowed
    assert {h.strip() for h in cors.expose_headers.split(",")} == {"grpc-status", "grpc-message", "grpc-status-details-bin"}
    assert {m.strip() for m in cors.allow_methods.split(",")} == {"GET", "PUT", "DELETE", "POST", "OPTIONS"}
    assert cors.max_age


def test_service_clusters_use_http2_at_documented_ports(edge: EdgeConfig) -> None:
    expected = {"auth": 50051, "ingest": 50052, "embedding": 50053, "projection": 50054}
    for name, port in expected.items():
        cluster = edge.clusters[name]
        assert (cluster.host, cluster.port, cluster.http2) == (name, port, True)
    assert (edge.clusters["web"].host, edge.clusters["web"].port) == ("web", 80)
