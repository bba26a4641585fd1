"""A read of envoy.yaml for tests that check it against other files (compose, protos):
its clusters, listener, routes and JWT provider, as plain data. How Envoy behaves is
tested against the running binary (tests/edge/test_envoy_edge.py), not modelled here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
ENVOY_YAML = REPO / "envoy.yaml"


@dataclass(frozen=True)
class Cluster:
    name: str
    host: str
    port: int
    http2: bool


class EnvoyDoc:
    def __init__(self, path: Path = ENVOY_YAML) -> None:
        self.doc: dict[str, Any] = yaml.safe_load(path.read_text())

    @property
    def listener(self) -> dict[str, Any]:
        (listener,) = self.doc["static_resources"]["listeners"]
        return dict(listener)

    @property
    def listen_port(self) -> int:
        return int(self.listener["address"]["socket_address"]["port_value"])

    @property
    def hcm(self) -> dict[str, Any]:
        hcm: dict[str, Any] = self.listener["filter_chains"][0]["filters"][0]["typed_config"]
        return hcm

    @property
    def routes(self) -> list[dict[str, Any]]:
        routes: list[dict[str, Any]] = self.hcm["route_config"]["virtual_hosts"][0]["routes"]
        return routes

    def http_filter(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = next(f for f in self.hcm["http_filters"] if f["name"] == name)
        return found

    @property
    def jwt(self) -> dict[str, Any]:
        config: dict[str, Any] = self.http_filter("envoy.filters.http.jwt_authn")["typed_config"]
        return config

    @property
    def clusters(self) -> dict[str, Cluster]:
        out = {}
        for cluster in self.doc["static_resources"]["clusters"]:
            endpoints = cluster["load_assignment"].get("endpoints", [])
            if not endpoints:
                continue
            address = endpoints[0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
            http2 = "http2_protocol_options" in str(cluster.get("typed_extension_protocol_options", {}))
            out[cluster["name"]] = Cluster(cluster["name"], address["address"], int(address["port_value"]), http2)
        return out
