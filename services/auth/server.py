"""Builds the auth server: gRPC (AuthService, AuthInternalService) plus the HTTP port
that publishes the JWKS for the edge and the other services."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from embedviz.v1 import auth_pb2, auth_pb2_grpc, embedding_pb2, ingest_pb2, projection_pb2
from services.auth.accounts import Accounts
from services.auth.key_encryption import KeyEncryption
from services.auth.keys import KeyRing
from services.auth.servicer import AuthInternalServicer, AuthServicer
from services.auth.settings import AuthSettings
from services.auth.throttle import LoginThrottle
from services.common import revocations
from services.common.app import Built, Deps, new_server

SERVICE_NAMES = [
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    auth_pb2.DESCRIPTOR.services_by_name["AuthInternalService"].full_name,
]
# Which methods are public (and which are guarded by the internal secret) is in the
# one access table, services/common/authz.py.

# The edge routes server reflection here, so auth's reflection describes the whole public
# API: `grpcurl -plaintext EDGE list` shows every service a client can call through it.
PUBLIC_API = [
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
    embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name,
    projection_pb2.DESCRIPTOR.services_by_name["ProjectionService"].full_name,
]


async def start_jwks_http(keys: KeyRing, addr: str) -> web.AppRunner:
    async def jwks(request: web.Request) -> web.Response:
        # No longer than the edge's cache_duration (15 s): a new key is published only 30 s ahead of use.
        return web.json_response(await keys.jwks(), headers={"Cache-Control": "public, max-age=15"})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = addr.rsplit(":", 1)
    await web.TCPSite(runner, host, int(port)).start()
    return runner


async def build(deps: Deps, own: AuthSettings | None = None) -> Built:
    """`own`: this service's settings, read when the process started (else now)."""
    settings = deps.settings
    own = own or AuthSettings.from_env()
    keys = KeyRing(
        deps.db.sessions,
        settings.access_token_ttl,
        own.key_retention_seconds,
        own.key_publish_ahead_seconds,
        sealing=KeyEncryption.from_env(),
        reload_every=own.key_reload_seconds,
    )
    await keys.ensure_key()
    accounts = Accounts(
        deps.db.sessions,
        keys,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        internal_audience=settings.internal_audience,
        access_ttl=settings.access_token_ttl,
        refresh_ttl=settings.refresh_token_ttl,
        throttle=LoginThrottle(own.login),
        delegated_ttl=own.delegated_token_ttl,
        revoke=lambda kind, ident: revocations.publish(deps.bus, kind, ident),
    )
    # The auth service trusts its own key ring directly, not its HTTP port.
    deps = dataclasses.replace(deps, verifier=deps.verifier.with_keys(keys.lookup))
    server, health = new_server(deps, SERVICE_NAMES, reflected_names=PUBLIC_API)
    auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(accounts), server)
    auth_pb2_grpc.add_AuthInternalServiceServicer_to_server(
        AuthInternalServicer(accounts, settings.internal_secret), server
    )
    http_host = settings.listen_host
    http_port = settings.auth_http_addr.rsplit(":", 1)[1]
    runner = await start_jwks_http(keys, f"{http_host}:{http_port}")
    return Built(
        server=server,
        health=health,
        service_names=SERVICE_NAMES,
        listen_addr=settings.listen_addr(settings.auth_addr),
        on_close=[runner.cleanup],
    )
