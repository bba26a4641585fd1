"""envoy.yaml, the one edge config: accepted by Envoy itself (`envoy --mode validate`, which
refuses unknown fields, bad regexes and dangling cluster names), its local form differs
only in addresses and ports, and it says what the services and docs say. How the edge
behaves is tested against the running Envoy in tests/edge/test_envoy_edge.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.auth.keys import publish_ahead_seconds
from services.common.config import Settings
from services.stack import envoy
from tests.edge.envoy_doc import ENVOY_YAML, EnvoyDoc

SERVICE_CLUSTERS = {
    "AuthService": "auth",
    "IngestService": "ingest",
    "EmbeddingService": "embedding",
    "ProjectionService": "projection",
}
PUBLIC_PREFIXES = [
    "/embedviz.v1.AuthService/SignUp",
    "/embedviz.v1.AuthService/Login",
    "/embedviz.v1.AuthService/RefreshSession",
    "/embedviz.v1.AuthService/ExchangeApiKey",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
]
LOCAL_CLUSTERS = {"auth": "127.0.0.1:41001", "ingest": "127.0.0.1:41002", "embedding": "127.0.0.1:41003",
                  "projection": "127.0.0.1:41004", "auth_http": "127.0.0.1:41005", "web": "127.0.0.1:41006"}


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([envoy.envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warning"],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def edge() -> EnvoyDoc:
    return EnvoyDoc()


@pytest.fixture(scope="module")
def local_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return envoy.write_local_config(tmp_path_factory.mktemp("envoy") / "envoy.yaml", listen="127.0.0.1:41000",
                                    admin="127.0.0.1:41009", clusters=LOCAL_CLUSTERS)


def test_envoy_accepts_envoy_yaml_and_its_local_form(local_file: Path) -> None:
    for path in (ENVOY_YAML, local_file):
        result = _validate(path)
        assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr


def test_envoy_validation_catches_an_unknown_field(tmp_path: Path, edge: EnvoyDoc) -> None:
    broken = yaml.safe_load(ENVOY_YAML.read_text())
    jwt = next(
        f
        for f in broken["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
            "http_filters"
        ]
        if f["name"] == "envoy.filters.http.jwt_authn"
    )
    jwt["typed_config"]["providers"]["embedviz_auth"]["audience"] = ["typo"]
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = _validate(path)
    assert result.returncode != 0 and "audience" in result.stdout + result.stderr


def _differences(a: Any, b: Any, where: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ"
        return [d for k in a for d in _differences(a[k], b[k], (*where, k))]
    if isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: lengths differ"
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, (*where, i))]
    return [] if a == b else [(where, a, b)]


def test_the_local_form_differs_only_in_addresses_and_ports(local_file: Path) -> None:
    production = yaml.safe_load(ENVOY_YAML.read_text())
    local = yaml.safe_load(local_file.read_text())
    changed = _differences(production, local)
    assert changed, "the local form must move the edge to loopback ports"
    for where, before, after in changed:
        leaf = where[-1]
        if leaf in ("address", "port_value"):
            assert where[-2] == "socket_address", where
            if leaf == "address":
                assert after == "127.0.0.1", (where, after)
        else:
            assert leaf == "uri", f"{where}: {before!r} -> {after!r} is neither an address nor a port"
            assert before.replace("auth:8081", "127.0.0.1:41005") == after, (before, after)
    moved = {where[:-1] for where, _, _ in changed}
    assert len(moved) >= len(LOCAL_CLUSTERS) + 2, "the listener, the admin and every cluster move"


def test_filters_in_order(edge: EnvoyDoc) -> None:
    names = [f["name"] for f in edge.hcm["http_filters"]]
    assert names == [
        "envoy.filters.http.lua", "envoy.filters.http.cors", "envoy.filters.http.compressor",
        "envoy.filters.http.grpc_web", "envoy.filters.http.local_ratelimit", "envoy.filters.http.jwt_authn",
        "embedviz.not_routed", "envoy.filters.http.router",
    ]
    assert edge.http_filter("embedviz.not_routed").get("disabled") is True, "only the not-routed routes enable it"


def test_listener_speaks_http1_and_http2_on_8080_and_admin_is_loopback(edge: EnvoyDoc) -> None:
    assert edge.listen_port == 8080
    assert edge.hcm["codec_type"] == "AUTO"
    assert edge.doc["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}


def test_every_public_service_has_a_route_to_its_cluster(edge: EnvoyDoc) -> None:
    by_prefix = {r["match"].get("prefix"): r for r in edge.routes}
    for service, cluster in SERVICE_CLUSTERS.items():
        route = by_prefix[f"/embedviz.v1.{service}/"]
        assert route["route"]["cluster"] == cluster
        assert edge.clusters[cluster].http2


def test_grpc_routes_have_no_timeout_and_no_edge_deadline(edge: EnvoyDoc) -> None:
    for route in edge.routes:
        action = route["route"]
        if action["cluster"] in ("web", "not_routed"):
            continue
        assert action["timeout"] == "0s" and action["idle_timeout"] == "0s", route["name"]
        assert "max_stream_duration" not in action, "the services enforce grpc-timeout themselves"


def test_not_routed_paths_reach_no_service(edge: EnvoyDoc) -> None:
    not_routed = [r for r in edge.routes if r["route"]["cluster"] == "not_routed"]
    assert {r["name"] for r in not_routed} == {"internal_not_routed", "unknown_grpc"}
    cluster = next(c for c in edge.doc["static_resources"]["clusters"] if c["name"] == "not_routed")
    assert not cluster["load_assignment"].get("endpoints"), "the not_routed cluster must have no endpoints"
    names = [r["name"] for r in edge.routes]
    assert names.index("internal_not_routed") < names.index("unknown_grpc") < names.index("web")


def test_public_paths_are_exactly_the_documented_list(edge: EnvoyDoc) -> None:
    rules = edge.jwt["rules"]
    assert [r["match"]["prefix"] for r in rules[:-1]] == PUBLIC_PREFIXES
    assert all("requires" not in r for r in rules[:-1])
    assert rules[-1]["requires"] == {"provider_name": "embedviz_auth"}
    assert "safe_regex" in rules[-1]["match"], "every other gRPC-shaped path needs a token"


def test_jwt_at_the_edge_is_at_least_as_strict_as_the_services(edge: EnvoyDoc) -> None:
    settings = Settings.from_env()
    provider = edge.jwt["providers"]["embedviz_auth"]
    assert provider["issuer"] == settings.jwt_issuer
    assert provider["audiences"] == [settings.jwt_audience], "only user tokens, never the internal audience"
    assert provider["require_expiration"] is True
    assert provider["clock_skew_seconds"] <= 5, "services allow 5 s of skew"
    assert provider["forward"] is True and provider["forward_payload_header"] == "x-jwt-payload"
    remote = provider["remote_jwks"]
    assert remote["http_uri"] == {
        "uri": "http://auth:8081/.well-known/jwks.json",
        "cluster": "auth_http",
        "timeout": "5s",
    }
    assert remote["cache_duration"] == "15s" and "async_fetch" in remote


def test_a_new_signing_key_is_published_long_before_it_signs(edge: EnvoyDoc) -> None:
    cache = float(edge.jwt["providers"]["embedviz_auth"]["remote_jwks"]["cache_duration"].removesuffix("s"))
    assert publish_ahead_seconds() >= 2 * cache, (
        "Envoy must have refetched the JWKS before the first token with a new key"
    )


def test_client_supplied_jwt_payload_is_removed_before_any_filter(edge: EnvoyDoc) -> None:
    mutations = edge.hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
    assert {"remove": "x-jwt-payload"} in mutations


def test_cors_allows_grpc_web_and_exposes_status(edge: EnvoyDoc) -> None:
    cors = edge.doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]["typed_per_filter_config"]["envoy.filters.http.cors"]
    allowed = {h.strip() for h in cors["allow_headers"].split(",")}
    assert {
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "connect-protocol-version",
    } <= allowed
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= {
        h.strip() for h in cors["expose_headers"].split(",")
    }


def test_only_sign_in_is_rate_limited_per_address(edge: EnvoyDoc) -> None:
    limited = [r for r in edge.routes if "envoy.filters.http.local_ratelimit" in r.get("typed_per_filter_config", {})]
    assert [r["name"] for r in limited] == ["auth_sign_in"]
    (route,) = limited
    assert route["match"]["safe_regex"]["regex"] == "/embedviz\\.v1\\.AuthService/(Login|SignUp)"
    config = route["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
    assert config["rate_limits"] == [{"actions": [{"remote_address": {}}]}]
    assert config["descriptors"][0]["entries"] == [{"key": "remote_address"}], "a bucket per address"


def test_access_log_is_json_with_the_request_id(edge: EnvoyDoc) -> None:
    (log,) = edge.hcm["access_log"]
    fields = log["typed_config"]["log_format"]["json_format"]
    assert fields["request_id"] == "%REQ(X-REQUEST-ID)%"
    assert {"path", "status", "grpc_status", "duration_ms", "upstream", "client"} <= set(fields)


def test_service_clusters_use_http2_at_documented_ports(edge: EnvoyDoc) -> None:
    expected = {"auth": 50051, "ingest": 50052, "embedding": 50053, "projection": 50054}
    for name, port in expected.items():
        cluster = edge.clusters[name]
        assert (cluster.host, cluster.port, cluster.http2) == (name, port, True)
    assert (edge.clusters["web"].host, edge.clusters["web"].port) == ("web", 80)
