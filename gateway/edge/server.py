"""The stand-in edge as an aiohttp application: CORS, JWT, grpc-web to gRPC, the web client.

It does what envoy.yaml tells Envoy to do (see gateway/edge/config.py for what is read),
over HTTP/1.1 only: browsers speak grpc-web through it; grpcurl talks gRPC to a service
directly here, or to Envoy in production.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
from aiohttp import web

from gateway.edge import grpcweb
from gateway.edge.config import EdgeConfig
from gateway.edge.grpcweb import WebMode
from gateway.edge.jwt_check import JwtError, KeyStore, bearer_token, verify_token
from gateway.edge.static import NO_BUILD_PAGE, resolve_static
from gateway.edge.upstream import Upstreams, forwarded_metadata

log = logging.getLogger("embedviz.edge")

# Initial metadata that is HTTP framing, not something to copy into the browser's headers.
_RESPONSE_HEADER_SKIP = frozenset({"content-type", "content-length", "transfer-encoding", "connection", "date", "server"})


@dataclass(frozen=True)
class Edge:
    config: EdgeConfig
    upstreams: Upstreams
    keys: dict[str, KeyStore]  # per JWT provider
    web_dist: Path


def _cors_headers(edge: Edge, request: web.Request) -> dict[str, str]:
    origin = request.headers.get("Origin")
    cors = edge.config.cors
    if cors is None or origin is None or not cors.allows_origin(origin):
        return {}
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if cors.expose_headers:
        headers["Access-Control-Expose-Headers"] = cors.expose_headers
    if cors.allow_credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers


def _preflight(edge: Edge, request: web.Request) -> web.Response:
    headers = _cors_headers(edge, request)
    cors = edge.config.cors
    if headers and cors is not None:
        headers["Access-Control-Allow-Methods"] = cors.allow_methods
        headers["Access-Control-Allow-Headers"] = cors.allow_headers
        if cors.max_age:
            headers["Access-Control-Max-Age"] = cors.max_age
    return web.Response(status=200, headers=headers)


def _trailers_only(cors: dict[str, str], mode: WebMode, code: int, message: str,
                   trailing: grpc.aio.Metadata | tuple[()] = (), initial: dict[str, str] | None = None) -> web.Response:
    status = grpcweb.status_headers(code, message, trailing)
    headers = {**cors, **(initial or {}), "Content-Type": mode.response_content_type}
    headers.update(dict(status))
    return web.Response(status=200, headers=headers, body=grpcweb.trailer_frame(status, mode))


def _append_forwarded_for(metadata: list[tuple[str, str | bytes]], remote: str | None) -> list[tuple[str, str | bytes]]:
    """Like Envoy with use_remote_address: the client's address becomes the last
    x-forwarded-for hop, the one services trust (earlier hops are the client's word)."""
    if not remote:
        return metadata
    given = [str(v) for k, v in metadata if k == "x-forwarded-for"]
    rest = [(k, v) for k, v in metadata if k != "x-forwarded-for"]
    return [*rest, ("x-forwarded-for", ", ".join([*given, remote]))]


def _initial_headers(metadata: grpc.aio.Metadata | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in metadata or ():
        k = key.lower()
        if k not in _RESPONSE_HEADER_SKIP and not k.startswith(":"):
            out[k] = grpcweb.metadata_value_text(k, value)
    return out


async def _serve_static(edge: Edge, request: web.Request, cors: dict[str, str]) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=405, headers=cors, text="method not allowed")
    path = resolve_static(edge.web_dist, request.path)
    if path is None:
        return web.Response(status=200, headers=cors, text=NO_BUILD_PAGE, content_type="text/html")
    return web.FileResponse(path, headers=cors)


async def _grpc_web(edge: Edge, request: web.Request, mode: WebMode, cors: dict[str, str]) -> web.StreamResponse:
    config = edge.config
    if request.method != "POST":
        return _trailers_only(cors, mode, grpcweb.UNIMPLEMENTED, "grpc-web calls are POST requests")
    metadata = forwarded_metadata(request.headers.items(), config.headers_removed_early)
    metadata = _append_forwarded_for(metadata, request.remote)

    rule = config.jwt_rule_for(request.path, is_grpc=True)
    if rule is not None and rule.requires_provider is not None:
        provider = config.providers[rule.requires_provider]
        try:
            verified = await verify_token(bearer_token(request.headers.get("Authorization")), provider, edge.keys[provider.name])
        except JwtError as exc:
            return _trailers_only(cors, mode, grpcweb.UNAUTHENTICATED, str(exc))
        if not provider.forward:
            metadata = [(k, v) for k, v in metadata if k != "authorization"]
        if provider.forward_payload_header:
            metadata.append((provider.forward_payload_header.lower(), verified.payload_b64url))

    route = config.route_for(request.path, is_grpc=True)
    if route is None:
        return _trailers_only(cors, mode, grpcweb.UNIMPLEMENTED, f"no route for {request.path}")
    if route.direct_status is not None:
        return _trailers_only(cors, mode, grpcweb.grpc_status_for_http(route.direct_status), "")
    if route.cluster not in edge.upstreams:
        return _trailers_only(cors, mode, grpcweb.UNIMPLEMENTED, f"no gRPC upstream for {request.path}")
    assert route.cluster is not None

    try:
        message = grpcweb.decode_request(await request.read(), mode)
    except grpcweb.GrpcWebError as exc:
        return _trailers_only(cors, mode, grpcweb.INTERNAL, str(exc))
    timeout = grpcweb.parse_grpc_timeout(request.headers.get("grpc-timeout"))
    call = edge.upstreams.call(route.cluster, request.path, message, metadata, timeout)
    return await _relay(call, request, mode, cors)


async def _relay(call: grpc.aio.UnaryStreamCall, request: web.Request, mode: WebMode, cors: dict[str, str]) -> web.StreamResponse:
    """Send the upstream's answer frame by frame as it arrives, then its status as trailers."""
    messages = call.__aiter__()
    response: web.StreamResponse | None = None
    try:
        try:
            first: bytes | None = await messages.__anext__()
        except StopAsyncIteration:
            first = None
        except grpc.aio.AioRpcError as exc:
            return _trailers_only(cors, mode, exc.code().value[0], exc.details() or "",
                                  exc.trailing_metadata() or (), _initial_headers(exc.initial_metadata()))
        if first is None:
            return _trailers_only(cors, mode, (await call.code()).value[0], await call.details() or "",
                                  await call.trailing_metadata() or (), _initial_headers(await call.initial_metadata()))

        headers = {**cors, **_initial_headers(await call.initial_metadata()), "Content-Type": mode.response_content_type}
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        await response.write(grpcweb.data_frame(first, mode))
        try:
            async for msg in messages:
                await response.write(grpcweb.data_frame(msg, mode))
            status = grpcweb.status_headers((await call.code()).value[0], await call.details() or "",
                                            await call.trailing_metadata() or ())
        except grpc.aio.AioRpcError as exc:
            status = grpcweb.status_headers(exc.code().value[0], exc.details() or "", exc.trailing_metadata() or ())
        await response.write(grpcweb.trailer_frame(status, mode))
        await response.write_eof()
        return response
    finally:
        call.cancel()  # no-op once done; stops the upstream call if the browser went away


async def handle(request: web.Request) -> web.StreamResponse:
    edge: Edge = request.app[EDGE_KEY]
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return _preflight(edge, request)
    cors = _cors_headers(edge, request)
    mode = grpcweb.web_mode(request.headers.get("Content-Type"))
    if mode is not None:
        return await _grpc_web(edge, request, mode, cors)
    if request.headers.get("Content-Type", "").startswith("application/grpc"):
        return web.Response(
            status=415, headers=cors,
            text="this stand-in edge speaks grpc-web over HTTP/1.1; send plain gRPC to a service directly (or to Envoy)",
        )
    route = edge.config.route_for(request.path, is_grpc=False)
    if route is None or route.direct_status is not None:
        return web.Response(status=route.direct_status if route else 404, headers=cors)
    if route.cluster in edge.upstreams:
        return web.Response(status=415, headers=cors, text="gRPC services take grpc-web here (content-type application/grpc-web)")
    return await _serve_static(edge, request, cors)


EDGE_KEY: web.AppKey[Edge] = web.AppKey("edge", Edge)


def build_app(edge: Edge) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[EDGE_KEY] = edge
    app.router.add_route("*", "/{tail:.*}", handle)

    async def close_upstreams(_: web.Application) -> None:
        await edge.upstreams.close()

    app.on_cleanup.append(close_upstreams)
    return app
