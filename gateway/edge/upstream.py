"""One gRPC channel per service cluster, and the rules for what request metadata goes up."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable, Mapping

import grpc
import grpc.aio

from gateway.edge.config import EdgeConfig

# docs/architecture.md: where each service listens on one machine.
DEFAULT_ADDRS = {
    "auth": "127.0.0.1:50051",
    "ingest": "127.0.0.1:50052",
    "embedding": "127.0.0.1:50053",
    "projection": "127.0.0.1:50054",
}

# Hop-by-hop, HTTP-only and browser-only headers that are no gRPC metadata.
NOT_FORWARDED = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
        "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length", "content-type",
        "accept", "accept-encoding", "accept-language", "origin", "referer", "user-agent",
        "x-grpc-web", "x-accept-content-transfer-encoding", "x-accept-response-streaming",
        "pragma", "cache-control", "priority", "dnt",
    }
)
_VALID_KEY = re.compile(r"^[0-9a-z_.\-]+$")
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")

Metadata = list[tuple[str, str | bytes]]


def cluster_addr(cluster: str, env: Mapping[str, str]) -> str:
    var = f"EMBEDVIZ_{cluster.upper()}_ADDR"
    addr = env.get(var) or DEFAULT_ADDRS.get(cluster)
    if not addr:
        raise ValueError(f"no address for cluster {cluster!r}: set {var}=host:port")
    return addr


def grpc_clusters(config: EdgeConfig) -> list[str]:
    """Clusters that routes send gRPC to (HTTP/2 upstreams)."""
    names = {r.cluster for r in config.routes if r.cluster}
    return sorted(n for n in names if n in config.clusters and config.clusters[n].http2)


def forwarded_metadata(headers: Iterable[tuple[str, str]], removed: Iterable[str]) -> Metadata:
    """Request headers that become gRPC metadata; a client's own `removed` headers are dropped."""
    dropped = set(removed)
    out: Metadata = []
    for key, value in headers:
        k = key.lower()
        if (
            k in NOT_FORWARDED or k in dropped or k.startswith(("grpc-", ":", "sec-", "access-control-"))
            or not _VALID_KEY.match(k)
        ):
            continue
        if k.endswith("-bin"):
            try:
                out.append((k, base64.b64decode(value + "=" * (-len(value) % 4))))
            except ValueError:
                continue
        elif _PRINTABLE.match(value):
            out.append((k, value))
    return out


class Upstreams:
    """The channels to the services, opened at start and closed at stop."""

    def __init__(self, addrs: Mapping[str, str]) -> None:
        self.addrs = dict(addrs)
        self._channels = {name: grpc.aio.insecure_channel(addr) for name, addr in self.addrs.items()}

    @classmethod
    def for_config(cls, config: EdgeConfig, env: Mapping[str, str] = os.environ) -> Upstreams:
        return cls({name: cluster_addr(name, env) for name in grpc_clusters(config)})

    def __contains__(self, cluster: object) -> bool:
        return cluster in self._channels

    def call(self, cluster: str, path: str, request: bytes, metadata: Metadata, timeout: float | None) -> grpc.aio.UnaryStreamCall:
        # Unary and server-streaming calls look the same on the wire: one message up, n down.
        multicallable = self._channels[cluster].unary_stream(
            path, request_serializer=None, response_deserializer=None
        )
        return multicallable(request, metadata=tuple(metadata), timeout=timeout)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
