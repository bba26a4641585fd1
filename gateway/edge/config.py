"""What the edge does, read from envoy.yaml: routes, JWT rules, CORS, clusters.

Plain Python, no aiohttp or grpc: the stand-in edge builds itself from an `EdgeConfig`,
and tests can read the same object to know what production Envoy does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HCM_NAME = "envoy.filters.network.http_connection_manager"
JWT_FILTER = "envoy.filters.http.jwt_authn"
CORS_FILTER = "envoy.filters.http.cors"


class EdgeConfigError(ValueError):
    """envoy.yaml lacks something the stand-in edge needs."""


@dataclass(frozen=True)
class PathMatch:
    """A subset of Envoy's RouteMatch: prefix, path, safe_regex, and the `grpc` flag."""

    prefix: str | None = None
    path: str | None = None
    regex: re.Pattern[str] | None = None
    grpc_only: bool = False

    def matches(self, path: str, is_grpc: bool) -> bool:
        if self.grpc_only and not is_grpc:
            return False
        if self.prefix is not None:
            return path.startswith(self.prefix)
        if self.path is not None:
            return path == self.path
        if self.regex is not None:
            return self.regex.fullmatch(path) is not None
        return False


@dataclass(frozen=True)
class Route:
    name: str
    match: PathMatch
    cluster: str | None = None
    direct_status: int | None = None


@dataclass(frozen=True)
class JwtRule:
    match: PathMatch
    requires_provider: str | None  # None: public, no verification


@dataclass(frozen=True)
class JwtProvider:
    name: str
    issuer: str
    audiences: tuple[str, ...]
    forward: bool
    forward_payload_header: str | None
    clock_skew_seconds: int
    jwks_cache_seconds: float


@dataclass(frozen=True)
class CorsPolicy:
    origin_patterns: tuple[re.Pattern[str], ...]
    allow_methods: str
    allow_headers: str
    expose_headers: str
    max_age: str | None
    allow_credentials: bool

    def allows_origin(self, origin: str) -> bool:
        return any(p.fullmatch(origin) for p in self.origin_patterns)


@dataclass(frozen=True)
class Cluster:
    name: str
    host: str
    port: int
    http2: bool


@dataclass(frozen=True)
class EdgeConfig:
    listen_port: int
    routes: tuple[Route, ...]
    jwt_rules: tuple[JwtRule, ...]
    providers: dict[str, JwtProvider]
    cors: CorsPolicy | None
    clusters: dict[str, Cluster]
    headers_removed_early: tuple[str, ...] = field(default=())

    def route_for(self, path: str, is_grpc: bool) -> Route | None:
        return next((r for r in self.routes if r.match.matches(path, is_grpc)), None)

    def jwt_rule_for(self, path: str, is_grpc: bool) -> JwtRule | None:
        return next((r for r in self.jwt_rules if r.match.matches(path, is_grpc)), None)

    def public_prefixes(self) -> list[str]:
        return [r.match.prefix for r in self.jwt_rules if r.requires_provider is None and r.match.prefix]


def _duration_seconds(value: Any, default: float) -> float:
    if value is None:
        return default
    text = str(value)
    if not text.endswith("s"):
        raise EdgeConfigError(f"duration {text!r} must end in 's' (protobuf JSON Duration)")
    return float(text[:-1])


def _path_match(match: dict[str, Any]) -> PathMatch:
    regex = match.get("safe_regex", {}).get("regex")
    return PathMatch(
        prefix=match.get("prefix"),
        path=match.get("path"),
        regex=re.compile(regex) if regex is not None else None,
        grpc_only="grpc" in match,
    )


def _typed(filter_entry: dict[str, Any]) -> dict[str, Any]:
    return dict(filter_entry.get("typed_config", {}))


def _find_hcm(doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    for listener in doc.get("static_resources", {}).get("listeners", []):
        port = int(listener["address"]["socket_address"]["port_value"])
        for chain in listener.get("filter_chains", []):
            for f in chain.get("filters", []):
                if f.get("name") == HCM_NAME:
                    return port, _typed(f)
    raise EdgeConfigError(f"no listener with {HCM_NAME} in envoy.yaml")


def _routes(hcm: dict[str, Any]) -> tuple[Route, ...]:
    vhosts = hcm.get("route_config", {}).get("virtual_hosts", [])
    if len(vhosts) != 1:
        raise EdgeConfigError("the stand-in edge expects exactly one virtual host in envoy.yaml")
    routes = []
    for i, r in enumerate(vhosts[0].get("routes", [])):
        direct = r.get("direct_response")
        routes.append(
            Route(
                name=r.get("name", f"route{i}"),
                match=_path_match(r["match"]),
                cluster=r.get("route", {}).get("cluster"),
                direct_status=int(direct["status"]) if direct else None,
            )
        )
    return tuple(routes)


def _cors(hcm: dict[str, Any]) -> CorsPolicy | None:
    vhost = hcm["route_config"]["virtual_hosts"][0]
    policy = vhost.get("typed_per_filter_config", {}).get(CORS_FILTER)
    if policy is None:
        return None
    patterns = []
    for m in policy.get("allow_origin_string_match", []):
        if "safe_regex" in m:
            patterns.append(re.compile(m["safe_regex"]["regex"]))
        elif "exact" in m:
            patterns.append(re.compile(re.escape(m["exact"])))
        elif "prefix" in m:
            patterns.append(re.compile(re.escape(m["prefix"]) + ".*"))
        else:
            raise EdgeConfigError(f"unsupported CORS origin matcher {m!r}")
    return CorsPolicy(
        origin_patterns=tuple(patterns),
        allow_methods=str(policy.get("allow_methods", "")),
        allow_headers=str(policy.get("allow_headers", "")),
        expose_headers=str(policy.get("expose_headers", "")),
        max_age=str(policy["max_age"]) if "max_age" in policy else None,
        allow_credentials=bool(policy.get("allow_credentials", False)),
    )


def _jwt(hcm: dict[str, Any]) -> tuple[tuple[JwtRule, ...], dict[str, JwtProvider]]:
    jwt_cfg = next((_typed(f) for f in hcm.get("http_filters", []) if f.get("name") == JWT_FILTER), None)
    if jwt_cfg is None:
        return (), {}
    providers = {}
    for name, p in jwt_cfg.get("providers", {}).items():
        remote = p.get("remote_jwks", {})
        providers[name] = JwtProvider(
            name=name,
            issuer=p["issuer"],
            audiences=tuple(p.get("audiences", [])),
            forward=bool(p.get("forward", False)),
            forward_payload_header=p.get("forward_payload_header"),
            clock_skew_seconds=int(p.get("clock_skew_seconds", 60)),
            jwks_cache_seconds=_duration_seconds(remote.get("cache_duration"), 300.0),
        )
    rules = []
    for rule in jwt_cfg.get("rules", []):
        requires = rule.get("requires")
        provider = None
        if requires is not None:
            provider = requires.get("provider_name")
            if provider not in providers:
                raise EdgeConfigError(f"jwt rule {rule!r}: the stand-in supports only provider_name requirements")
        rules.append(JwtRule(match=_path_match(rule["match"]), requires_provider=provider))
    return tuple(rules), providers


def _clusters(doc: dict[str, Any]) -> dict[str, Cluster]:
    clusters = {}
    for c in doc.get("static_resources", {}).get("clusters", []):
        addr = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        options = c.get("typed_extension_protocol_options", {}).get(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {}
        )
        http2 = "http2_protocol_options" in options.get("explicit_http_config", {})
        clusters[c["name"]] = Cluster(c["name"], addr["address"], int(addr["port_value"]), http2)
    return clusters


def _early_removed(hcm: dict[str, Any]) -> tuple[str, ...]:
    removed = []
    for ext in hcm.get("early_header_mutation_extensions", []):
        for m in _typed(ext).get("mutations", []):
            if "remove" in m:
                removed.append(str(m["remove"]).lower())
    return tuple(removed)


def parse_edge_config(doc: dict[str, Any]) -> EdgeConfig:
    port, hcm = _find_hcm(doc)
    rules, providers = _jwt(hcm)
    return EdgeConfig(
        listen_port=port,
        routes=_routes(hcm),
        jwt_rules=rules,
        providers=providers,
        cors=_cors(hcm),
        clusters=_clusters(doc),
        headers_removed_early=_early_removed(hcm),
    )


def load_edge_config(path: Path) -> EdgeConfig:
    with path.open(encoding="utf-8") as f:
        return parse_edge_config(yaml.safe_load(f))
