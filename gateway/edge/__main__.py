"""python -m gateway.edge: the stand-in edge, configured from envoy.yaml and the environment.

EMBEDVIZ_EDGE_ADDR (127.0.0.1:8080), EMBEDVIZ_ENVOY_CONFIG (the repository's envoy.yaml),
EMBEDVIZ_{CLUSTER}_ADDR per gRPC cluster (EMBEDVIZ_AUTH_ADDR, ...), EMBEDVIZ_JWKS_URL,
EMBEDVIZ_WEB_DIST (gateway/web/dist), EMBEDVIZ_JWKS_CACHE_SECONDS (envoy.yaml's cache_duration).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.edge.config import load_edge_config
from gateway.edge.jwt_check import KeyStore
from gateway.edge.server import Edge, build_app
from gateway.edge.upstream import Upstreams

REPO_ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("embedviz.edge")


def _jwks_url(env: Mapping[str, str]) -> str:
    if env.get("EMBEDVIZ_JWKS_URL"):
        return env["EMBEDVIZ_JWKS_URL"]
    return f"http://{env.get('EMBEDVIZ_AUTH_HTTP_ADDR', '127.0.0.1:8081')}/.well-known/jwks.json"


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve(env: Mapping[str, str]) -> None:
    config = load_edge_config(Path(env.get("EMBEDVIZ_ENVOY_CONFIG", REPO_ROOT / "envoy.yaml")))
    host, port = _split_addr(env.get("EMBEDVIZ_EDGE_ADDR", "127.0.0.1:8080"))
    jwks_url = _jwks_url(env)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def fetch_jwks() -> dict[str, Any]:
        async with http.get(jwks_url) as resp:
            resp.raise_for_status()
            data: dict[str, Any] = await resp.json(content_type=None)
            return data

    # EMBEDVIZ_JWKS_CACHE_SECONDS overrides envoy.yaml's cache_duration (tests of key rotation).
    override = env.get("EMBEDVIZ_JWKS_CACHE_SECONDS")
    keys = {
        name: KeyStore(fetch_jwks, float(override) if override else p.jwks_cache_seconds)
        for name, p in config.providers.items()
    }
    upstreams = Upstreams.for_config(config, env)
    edge = Edge(config=config, upstreams=upstreams, keys=keys,
                web_dist=Path(env.get("EMBEDVIZ_WEB_DIST", REPO_ROOT / "gateway/web/dist")))
    runner = web.AppRunner(build_app(edge), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("edge on http://%s:%d, upstreams %s, JWKS %s", host, port, upstreams.addrs, jwks_url)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await http.close()


def main() -> None:
    logging.basicConfig(level=os.environ.get("EMBEDVIZ_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(os.environ))


if __name__ == "__main__":
    main()
