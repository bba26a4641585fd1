"""The edge conformance checks: what the edge (Envoy with envoy.yaml) must do for a
grpc-web client, whatever it sits in front of.

Each check is `async def check_...(target, session)` and raises AssertionError on a
difference. `EdgeTarget` says where the edge is and what it can be asked; a check that
needs something the target lacks (a trusted signing key, a slow stream, an upstream that
echoes its metadata) lists it in `needs` and is left out of that target's run by
`checks_for(target)` — tests/edge/edge_url_suite.py shows a run against any EDGE_URL.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from tests.edge.client import GrpcWebReply, grpc_web_call
from tests.edge.tokens import TokenMint

UNAUTHENTICATED = 16
UNIMPLEMENTED = 12
DEADLINE_EXCEEDED = 4
ORIGIN = "http://localhost:5173"
GRPC_WEB_REQUEST_HEADERS = ("content-type", "x-grpc-web", "x-user-agent", "authorization", "grpc-timeout")


@dataclass(frozen=True)
class StreamProbe:
    """A server-streaming call that sends `count` messages `gap_s` seconds apart."""

    path: str
    request: bytes
    count: int
    gap_s: float


@dataclass(frozen=True)
class EdgeTarget:
    edge_url: str
    protected_path: str = "/embedviz.v1.AuthService/GetCurrentUser"
    protected_request: bytes = b""
    public_path: str = "/grpc.health.v1.Health/Check"
    public_request: bytes = b""  # HealthCheckRequest{service: ""}
    internal_path: str = "/embedviz.v1.IngestInternalService/GetProjectRole"
    mint: TokenMint | None = None  # a key the edge trusts; None: only what needs no such key
    valid_token: str | None = None  # when there is no mint: a real token (from Login)
    stream: StreamProbe | None = None
    # The upstream answers a unary call with JSON {"metadata": {...}} of what it received.
    echo_path: str | None = None
    echo_public_path: str | None = None
    capabilities: frozenset[str] = field(default=frozenset())

    def token(self) -> str:
        if self.mint is not None:
            return self.mint.valid()
        assert self.valid_token is not None
        return self.valid_token

    def has(self, need: str) -> bool:
        return {
            "mint": self.mint is not None,
            "token": self.mint is not None or self.valid_token is not None,
            "stream": self.stream is not None,
            "echo": self.echo_path is not None and self.echo_public_path is not None,
        }[need]


Check = Callable[[EdgeTarget, aiohttp.ClientSession], Awaitable[None]]
CHECKS: dict[str, tuple[Check, tuple[str, ...]]] = {}


def check(*needs: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS[fn.__name__.removeprefix("check_")] = (fn, needs)
        return fn

    return register


def checks_for(target: EdgeTarget) -> list[str]:
    return [name for name, (_, needs) in CHECKS.items() if all(target.has(n) for n in needs)]


def assert_status(reply: GrpcWebReply, code: int) -> None:
    assert reply.http_status == 200, f"HTTP {reply.http_status}: grpc-web clients read this as UNKNOWN"
    assert reply.grpc_status == code, f"grpc-status {reply.grpc_status} ({reply.grpc_message!r}), want {code}"
    assert reply.headers.get("access-control-allow-origin") == ORIGIN, "CORS headers missing on an error reply"


async def _refused(target: EdgeTarget, session: aiohttp.ClientSession, token: str | None, **kw: str) -> None:
    reply = await grpc_web_call(
        session, target.edge_url, target.protected_path, target.protected_request, token=token, headers=kw or None
    )
    assert_status(reply, UNAUTHENTICATED)
    assert reply.grpc_message, "an auth failure should say what was wrong"
    assert not reply.messages


@check()
async def check_cors_preflight_allows_grpc_web(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    headers = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": ",".join(GRPC_WEB_REQUEST_HEADERS),
    }
    async with session.options(target.edge_url + target.protected_path, headers=headers) as resp:
        assert resp.status in (200, 204), resp.status
        assert resp.headers.get("Access-Control-Allow-Origin") in (ORIGIN, "*")
        allowed = {h.strip().lower() for h in resp.headers.get("Access-Control-Allow-Headers", "").split(",")}
        assert set(GRPC_WEB_REQUEST_HEADERS) <= allowed, f"missing {set(GRPC_WEB_REQUEST_HEADERS) - allowed}"
        assert "POST" in resp.headers.get("Access-Control-Allow-Methods", "")
        assert resp.headers.get("Access-Control-Max-Age")


@check()
async def check_grpc_status_exposed_to_browser(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    reply = await grpc_web_call(session, target.edge_url, target.protected_path, target.protected_request)
    exposed = {h.strip().lower() for h in reply.headers.get("access-control-expose-headers", "").split(",")}
    assert {"grpc-status", "grpc-message"} <= exposed, exposed


@check()
async def check_no_token_is_unauthenticated(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    await _refused(target, session, None)


@check()
async def check_garbage_token_is_unauthenticated(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    await _refused(target, session, "not-a-jwt")
    await _refused(target, session, "aaa.bbb.ccc")


@check("mint")
async def check_expired_token_is_unauthenticated(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    assert target.mint is not None
    await _refused(target, session, target.mint.expired())


@check("mint")
async def check_not_yet_valid_token_is_unauthenticated(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    assert target.mint is not None
    await _refused(target, session, target.mint.not_yet_valid())


@check("mint")
async def check_wrong_issuer_is_unauthenticated(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    assert target.mint is not None
    await _refused(target, session, target.mint.wrong_issuer())


@check("mint")
async def check_wrong_audience_is_unauthenticated(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    assert target.mint is not None
    await _refused(target, session, target.mint.wrong_audience())


@check("mint")
async def check_unknown_kid_is_unauthenticated(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    assert target.mint is not None
    await _refused(target, session, target.mint.unknown_kid())


@check("mint")
async def check_known_kid_other_key_is_unauthenticated(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    assert target.mint is not None
    await _refused(target, session, target.mint.known_kid_other_key())


@check("mint")
async def check_alg_none_is_unauthenticated(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    assert target.mint is not None
    await _refused(target, session, target.mint.alg_none())


@check("mint")
async def check_edited_payload_is_unauthenticated(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    assert target.mint is not None
    await _refused(target, session, target.mint.payload_edited())


@check("mint")
async def check_hs256_with_public_key_is_unauthenticated(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    assert target.mint is not None
    await _refused(target, session, target.mint.hs256_with_public_key())


@check()
async def check_public_health_needs_no_token(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    reply = await grpc_web_call(session, target.edge_url, target.public_path, target.public_request)
    assert reply.http_status == 200
    assert reply.grpc_status == 0, (reply.grpc_status, reply.grpc_message)
    assert reply.messages == [b"\x08\x01"], reply.messages  # HealthCheckResponse{status: SERVING}


@check("token")
async def check_valid_token_unary_call_succeeds(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    reply = await grpc_web_call(
        session, target.edge_url, target.protected_path, target.protected_request, token=target.token()
    )
    assert reply.grpc_status == 0, (reply.grpc_status, reply.grpc_message)
    assert len(reply.messages) == 1
    assert reply.headers.get("content-type", "").startswith("application/grpc-web")


@check("token")
async def check_grpc_web_text_mode(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    reply = await grpc_web_call(
        session, target.edge_url, target.protected_path, target.protected_request, token=target.token(), text=True
    )
    assert reply.grpc_status == 0, (reply.grpc_status, reply.grpc_message)
    assert len(reply.messages) == 1
    assert reply.headers.get("content-type", "").startswith("application/grpc-web-text")


@check()
async def check_internal_service_needs_token_first(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    reply = await grpc_web_call(session, target.edge_url, target.internal_path)
    assert_status(reply, UNAUTHENTICATED)


@check("token")
async def check_internal_service_is_not_routed(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    reply = await grpc_web_call(session, target.edge_url, target.internal_path, token=target.token())
    assert_status(reply, UNIMPLEMENTED)
    assert not reply.messages


@check("stream", "token")
async def check_slow_server_stream_arrives_message_by_message(
    target: EdgeTarget, session: aiohttp.ClientSession
) -> None:
    assert target.stream is not None
    probe = target.stream
    reply = await grpc_web_call(session, target.edge_url, probe.path, probe.request, token=target.token())
    assert reply.grpc_status == 0, (reply.grpc_status, reply.grpc_message)
    assert len(reply.messages) == probe.count
    gaps = [b - a for a, b in itertools.pairwise(reply.arrivals)]
    assert all(g >= probe.gap_s * 0.7 for g in gaps), f"messages were buffered, not streamed: gaps {gaps}"


@check("stream", "token")
async def check_client_deadline_is_propagated(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    assert target.stream is not None
    probe = target.stream
    timeout_ms = int(probe.gap_s * 1000 / 2)
    reply = await grpc_web_call(session, target.edge_url, probe.path, probe.request, token=target.token(),
                                headers={"grpc-timeout": f"{timeout_ms}m"})
    assert reply.grpc_status == DEADLINE_EXCEEDED, (reply.grpc_status, reply.grpc_message)


@check("echo", "mint")
async def check_client_jwt_payload_header_is_replaced(target: EdgeTarget, session: aiohttp.ClientSession) -> None:
    assert target.mint is not None and target.echo_path is not None
    token = target.mint.valid()
    reply = await grpc_web_call(
        session, target.edge_url, target.echo_path, token=token, headers={"x-jwt-payload": "forged"}
    )
    assert reply.grpc_status == 0, (reply.grpc_status, reply.grpc_message)
    seen = json.loads(reply.messages[0])["metadata"]
    assert seen.get("x-jwt-payload") == token.split(".")[1], seen.get("x-jwt-payload")
    assert seen.get("authorization") == f"Bearer {token}", "the token must reach the service, which verifies it too"


@check("echo")
async def check_client_jwt_payload_header_is_stripped_on_public_path(
    target: EdgeTarget, session: aiohttp.ClientSession
) -> None:
    assert target.echo_public_path is not None
    reply = await grpc_web_call(
        session, target.edge_url, target.echo_public_path, headers={"x-jwt-payload": "forged", "x-custom": "kept"}
    )
    assert reply.grpc_status == 0, (reply.grpc_status, reply.grpc_message)
    seen = json.loads(reply.messages[0])["metadata"]
    assert "x-jwt-payload" not in seen, seen
    assert seen.get("x-custom") == "kept", "custom request metadata must reach the service"


@check("echo")
async def check_client_address_is_the_last_forwarded_for_hop(
    target: EdgeTarget, session: aiohttp.ClientSession
) -> None:
    """Services throttle failed logins per client address: the last x-forwarded-for hop,
    which the edge appends. A hop the client sends itself never ends up last."""
    assert target.echo_public_path is not None
    reply = await grpc_web_call(
        session, target.edge_url, target.echo_public_path, headers={"x-forwarded-for": "203.0.113.1"}
    )
    assert reply.grpc_status == 0, (reply.grpc_status, reply.grpc_message)
    hops = [h.strip() for h in json.loads(reply.messages[0])["metadata"].get("x-forwarded-for", "").split(",")]
    assert hops[-1] and hops[-1] != "203.0.113.1", hops
