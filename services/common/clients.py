"""Calls to other services: channels, the caller's identity on outgoing calls, delegated
tokens for background workers, and the project-role check every service makes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import jwt
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from embedviz.v1 import auth_pb2, auth_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from services.common import telemetry
from services.common.auth import Identity, TokenVerifier
from services.common.errors import FailedPrecondition, NotFound, PermissionDenied, Unauthenticated, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

INTERNAL_SECRET_HEADER = "x-embedviz-internal-secret"

ROLE_NAMES: dict[int, str] = {
    ingest_pb2.ROLE_VIEWER: "viewer",
    ingest_pb2.ROLE_EDITOR: "editor",
    ingest_pb2.ROLE_OWNER: "owner",
}


class TraceClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Every call to another service is a client span of the current trace, and carries
    it on (W3C traceparent in the metadata), so the called service continues it."""

    def __init__(self) -> None:
        self._endings: set[asyncio.Task[None]] = set()

    async def _traced(self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        grpc_service, _, grpc_method = method.lstrip("/").rpartition("/")
        span = telemetry.TRACER.start_span(
            method.lstrip("/"),
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": grpc_service, "rpc.method": grpc_method},
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *carrier.items())
        traced = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        try:
            call = await continuation(traced, request)
        except BaseException:
            span.end()
            raise

        async def end() -> None:
            code = await call.code()
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code != grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
            span.end()

        def done(_: Any) -> None:  # the call's status is read with an await: in a task of its own
            ending = asyncio.get_running_loop().create_task(end())
            self._endings.add(ending)
            ending.add_done_callback(self._endings.discard)

        call.add_done_callback(done)
        return call

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._traced(continuation, client_call_details, request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._traced(continuation, client_call_details, request)

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await self._traced(continuation, client_call_details, request_iterator)

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._traced(continuation, client_call_details, request_iterator)


class Channels:
    """One channel per target address, opened on first use, closed together; every call
    on them carries the trace on (TraceClientInterceptor)."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                target,
                options=[
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ],
                interceptors=[TraceClientInterceptor()],
            )
            self._channels[target] = channel
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


@dataclass(frozen=True)
class _Minted:
    identity: Identity
    renew_at: float  # on the tokens' clock (monotonic): half the token's lifetime after it was asked for


class DelegatedTokens:
    """Short-lived tokens that let a background worker act as a job's owner, minted by
    the auth service for callers that hold the internal secret. A token is handed out
    until half its lifetime (auth's EMBEDVIZ_DELEGATED_TOKEN_TTL) has passed, so every
    call starts with a token that has at least half its lifetime left. One per process,
    shared by its workers: jobs of the same owner share a token."""

    def __init__(
        self,
        auth_channel: grpc.aio.Channel,
        secret: str,
        verifier: TokenVerifier,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = auth_pb2_grpc.AuthInternalServiceStub(auth_channel)
        self._secret = secret
        self._verifier = verifier
        self._clock = clock
        self._cache: dict[str, _Minted] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def for_job(self, owner: str) -> JobCredentials:
        """What a worker holds for the whole of one job of `owner` (`users/{id}`)."""
        return JobCredentials(self, owner)

    async def identity_for(self, user: str) -> Identity:
        """`user`'s identity with a token that has at least half its lifetime left."""
        async with self._locks.setdefault(user, asyncio.Lock()):
            cached = self._cache.get(user)
            if cached is not None and self._clock() < cached.renew_at:
                return cached.identity
            return await self._mint(user)

    async def renewed(self, user: str, refused: Identity) -> Identity:
        """A newly minted identity for `user` after a service refused `refused`; the one
        already cached if another call replaced the refused token meanwhile."""
        async with self._locks.setdefault(user, asyncio.Lock()):
            cached = self._cache.get(user)
            if cached is not None and cached.identity.token != refused.token and self._clock() < cached.renew_at:
                return cached.identity
            return await self._mint(user)

    async def _mint(self, user: str) -> Identity:
        asked = self._clock()
        try:
            response = await self._stub.IssueDelegatedToken(
                # ttl 0: auth's own setting decides the lifetime
                auth_pb2.IssueDelegatedTokenRequest(user=user),
                metadata=((INTERNAL_SECRET_HEADER, self._secret),),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self._cache.pop(user, None)
                raise FailedPrecondition(
                    f"the owner of this job, {user}, no longer has an account, so nothing may act for them; "
                    "the job stopped. Someone with access to the project can start it again"
                ) from None
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(
                    "the auth service is not reachable to renew the credentials of this job; it is tried again shortly"
                ) from None
            raise
        identity = await self._verifier.verify(response.access_token)
        # Both times are auth's, so the lifetime is right even if this host's clock is not.
        claims = jwt.decode(response.access_token, options={"verify_signature": False})
        lifetime = max(float(claims["exp"]) - float(claims["iat"]), 0.0)
        self._cache[user] = _Minted(identity, asked + lifetime / 2)
        return identity


def refused_as_unauthenticated(exc: BaseException) -> bool:
    """A neighbour's UNAUTHENTICATED, raw or already turned into a domain error."""
    if isinstance(exc, Unauthenticated):
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAUTHENTICATED


class JobCredentials:
    """A job owner's credentials, held by the worker for as long as the job runs. Each
    call to another service asks for the identity anew (renewed at half its lifetime, so
    a job can outlive any token); a call refused as UNAUTHENTICATED is made once more with
    a newly minted token, and a second refusal fails with a message that says so. Server
    streams are checked when they start, so a long stream keeps the token it began with."""

    def __init__(self, tokens: DelegatedTokens, owner: str) -> None:
        self._tokens = tokens
        self.owner = owner

    async def identity(self) -> Identity:
        """The owner's identity for one call starting now."""
        return await self._tokens.identity_for(self.owner)

    async def call(self, make: Callable[[Identity], Awaitable[T]], what: str = "calling another service") -> T:
        """`make(identity)`, again with a new token if the first was refused as UNAUTHENTICATED.
        `make` must be safe to repeat (a refused call did nothing). `what` says what the call
        does, for the log and the error ("reading the rows of projects/p/datasets/d")."""
        identity = await self.identity()
        for attempt in (1, 2):
            try:
                return await make(identity)
            except (NotFound, PermissionDenied) as exc:
                raise self._lost_access(exc) from None
            except Exception as exc:
                if not refused_as_unauthenticated(exc):
                    raise
                if attempt == 2:
                    raise Unauthenticated(
                        f"the credentials of this job's owner ({self.owner}) were refused twice while {what}, "
                        f"the second time with a token minted a moment before: {_reason(exc)}. "
                        "The services' clocks may disagree, "
                        "or one of them does not trust the auth service's signing keys"
                    ) from None
                log.warning(
                    "the token of %s was refused while %s (%s); trying once with a new one",
                    self.owner,
                    what,
                    _reason(exc),
                )
            identity = await self._tokens.renewed(self.owner, identity)
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _lost_access(self, exc: NotFound | PermissionDenied) -> NotFound | PermissionDenied:
        """The same error, saying whose access it was: the job's owner may have left the
        project since the job started."""
        return type(exc)(
            f"{exc.message}; this job runs as its owner ({self.owner}), who may have been removed from the "
            "project: someone who still has access can start it again",
            exc.reason,
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Unauthenticated):
        return exc.message
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.details() or exc.code().name
    return str(exc)


class ProjectAccess:
    """The caller's role in a project, asked of ingest (the owner of projects) and cached
    for a few seconds. No role: NOT_FOUND. Too small a role: PERMISSION_DENIED."""

    def __init__(self, ingest_channel: grpc.aio.Channel, ttl: float = 5.0) -> None:
        self._stub = ingest_pb2_grpc.IngestInternalServiceStub(ingest_channel)
        self._ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, int]] = {}

    async def role(self, identity: Identity, project: str) -> int:
        key = (identity.user_id, project)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached and now - cached[0] < self._ttl:
            return cached[1]
        try:
            response = await self._stub.GetProjectRole(
                ingest_pb2.GetProjectRoleRequest(project=project),
                metadata=identity.metadata(),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"{project} not found") from None
            raise
        self._cache[key] = (now, response.role)
        return response.role

    async def require(self, identity: Identity, project: str, minimum: int, resource: str = "") -> int:
        role = await self.role(identity, project)
        if role < minimum:
            what = resource or project
            raise PermissionDenied(
                f"your role in {project} is {ROLE_NAMES.get(role, 'none')}; "
                f"this needs {ROLE_NAMES[minimum]} on {what}"
            )
        return role
