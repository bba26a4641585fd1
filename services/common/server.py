"""One server bootstrap for every service: grpc.aio server, auth and error interceptors,
standard health service, server reflection, graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from services.common import input_rules, paging, request_ids, telemetry
from services.common.auth import TokenVerifier, bearer_token, reset_identity, set_identity
from services.common.authz import AuthzInterceptor, RoleLookup
from services.common.authz import public_methods as authz_public_methods
from services.common.errors import DomainError, InvalidArgument, Unauthenticated, capped
from services.common.rpc_types import Context, MethodHandler

log = logging.getLogger(__name__)
# One line per call (method, outcome, time) carrying the request id Envoy logs too.
calls_log = logging.getLogger("embedviz.calls")

ERROR_DOMAIN = "embedviz.dev"

# Methods anyone may call without a token, on every service.
ALWAYS_PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

Behaviour = Callable[..., Any]


def _wrap_handler(
    handler: MethodHandler,
    unary: Callable[[Behaviour], Behaviour],
    streaming: Callable[[Behaviour], Behaviour],
    deserializer: Callable[[bytes], Any] | None = None,
) -> MethodHandler:
    """Rebuild a method handler with its behaviour wrapped (for any of the four kinds)
    and, when given, another request deserializer."""
    request_deserializer = deserializer or handler.request_deserializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary),
            request_deserializer=request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            streaming(handler.unary_stream),
            request_deserializer=request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary),
            request_deserializer=request_deserializer,
            response_serializer=handler.response_serializer,
        )
    assert handler.stream_stream is not None, "a method handler has one of the four behaviours"
    return grpc.stream_stream_rpc_method_handler(
        streaming(handler.stream_stream),
        request_deserializer=request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _Undecodable:
    """Stands in for a request whose bytes are no valid message (grpc would answer
    UNKNOWN); the error interceptor turns it into INVALID_ARGUMENT."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, or anything a custom deserializer raises
            return _Undecodable(str(exc))

    return deserialize


def _refuse_undecodable(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            f"the request is not a valid message of this method: {request.reason}", "MALFORMED_REQUEST"
        )


async def _abort_for(exc: BaseException, context: Context, method: str) -> None:
    # Every message is capped: a reply's trailers must stay far below gRPC's 16 KB default
    # whatever a message quotes, or the caller sees RESOURCE_EXHAUSTED instead.
    if isinstance(exc, DomainError):
        status = status_pb2.Status(code=exc.code.value[0], message=capped(exc.message))
        info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN)
        detail = any_pb2.Any()
        detail.Pack(info)
        status.details.append(detail)
        for extra in exc.details:
            packed = any_pb2.Any()
            packed.Pack(extra)
            status.details.append(packed)
        rich = rpc_status.to_status(status)
        await context.abort(rich.code, rich.details, rich.trailing_metadata)
    if isinstance(exc, grpc.aio.AioRpcError):
        # An answer from another service this call depended on: pass its status on.
        code = exc.code()
        if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
            log.error("%s: downstream call failed: %s", method, capped(exc.details() or "", 4096))
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in a service this call needs")
        await context.abort(code, capped(exc.details() or code.name))
    ref = uuid.uuid4().hex[:12]
    log.error("%s failed (ref %s)", method, ref, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); the server log has the details")


def _outcome(exc: BaseException) -> str:
    """How a call ended, for its log line."""
    if isinstance(exc, DomainError):
        return exc.code.name
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "CANCELLED"
    if isinstance(exc, grpc.aio.AbortError):
        return "ABORTED_BY_HANDLER"
    return "INTERNAL"


def _grpc_type(handler: MethodHandler) -> str:
    if handler.unary_unary:
        return "unary"
    if handler.unary_stream:
        return "server_stream"
    return "client_stream" if handler.stream_unary else "bidi_stream"


def _final_code(exc: BaseException, context: Context) -> str:
    """The status a call that raised ends with: an abort carries its code on the context."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "CANCELLED"
    code = context.code()
    if isinstance(exc, grpc.aio.AbortError) and isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN"


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Outermost: every call is counted and timed by method and the status it ended with
    (embedviz_rpc_server_*, on /metrics), and served inside a span that continues the
    caller's trace (the W3C traceparent in its metadata), so that everything the call does
    (its log lines, its calls to other services, the messages it queues) belongs to it."""

    def __init__(self, service: str) -> None:
        self._service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        grpc_service, _, grpc_method = method.lstrip("/").rpartition("/")
        labels = (self._service, _grpc_type(handler), grpc_service, grpc_method)
        metadata = handler_call_details.invocation_metadata
        traced = not method.startswith(ALWAYS_PUBLIC_PREFIXES)  # probes: counted, not traced

        def span() -> Any:
            if not traced:
                return contextlib.nullcontext(None)
            return telemetry.TRACER.start_as_current_span(
                method.lstrip("/"),
                context=telemetry.context_from(metadata),
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": grpc_service, "rpc.method": grpc_method},
                record_exception=False,
                set_status_on_exception=False,
            )

        def finish(started: float, code: str, current: Any) -> None:
            telemetry.RPC_HANDLED.labels(*labels, code).inc()
            telemetry.RPC_SECONDS.labels(*labels, code).observe(time.monotonic() - started)
            if current is not None:
                current.set_attribute("rpc.grpc.status_code", grpc.StatusCode[code].value[0])
                if code in telemetry.SERVER_ERRORS:
                    current.set_status(Status(StatusCode.ERROR, code))

        def ended_well(context: Context) -> str:
            code = context.code()
            return code.name if isinstance(code, grpc.StatusCode) else "OK"

        def unary(behaviour: Behaviour) -> Behaviour:
            async def wrapped(request: Any, context: Context) -> Any:
                with span() as current:
                    started, code = time.monotonic(), "OK"
                    try:
                        result = await behaviour(request, context)
                        code = ended_well(context)
                        return result
                    except BaseException as exc:
                        code = _final_code(exc, context)
                        raise
                    finally:
                        finish(started, code, current)

            return wrapped

        def streaming(behaviour: Behaviour) -> Behaviour:
            # The span is made current only while the handler computes its next item, never
            # across a `yield`: a stream the client cancels is closed from another context,
            # where a context token set before the yield cannot be reset.
            async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
                current = None
                if traced:
                    current = telemetry.TRACER.start_span(
                        method.lstrip("/"),
                        context=telemetry.context_from(metadata),
                        kind=SpanKind.SERVER,
                        attributes={"rpc.system": "grpc", "rpc.service": grpc_service, "rpc.method": grpc_method},
                    )
                started, code = time.monotonic(), "OK"
                items = behaviour(request, context).__aiter__()
                try:
                    while True:
                        token = otel_context.attach(set_span_in_context(current)) if current is not None else None
                        try:
                            item = await items.__anext__()
                        except StopAsyncIteration:
                            break
                        finally:
                            if token is not None:
                                otel_context.detach(token)
                        yield item
                    code = ended_well(context)
                except BaseException as exc:
                    code = _final_code(exc, context)
                    raise
                finally:
                    finish(started, code, current)
                    if current is not None:
                        current.end()
                    with contextlib.suppress(Exception):
                        await items.aclose()

            return wrapped

        return _wrap_handler(handler, unary, streaming)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Domain errors become their status; anything unexpected becomes INTERNAL with a
    generic message and a logged traceback. Nothing internal leaks to the caller."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        request_id = request_ids.from_metadata(handler_call_details.invocation_metadata)

        quiet = method.startswith(ALWAYS_PUBLIC_PREFIXES)  # probes and grpcurl: not worth a line each

        def log_call(started: float, outcome: str) -> None:
            if not quiet:
                calls_log.info("%s %s %.0f ms", method, outcome, (time.monotonic() - started) * 1000)

        def unary(behaviour: Behaviour) -> Behaviour:
            async def wrapped(request: Any, context: Context) -> Any:
                if request_id:
                    request_ids.set_current(request_id)
                started, outcome = time.monotonic(), "OK"
                try:
                    _refuse_undecodable(request)
                    return await behaviour(request, context)
                except (grpc.aio.AbortError, asyncio.CancelledError) as exc:
                    outcome = _outcome(exc)
                    raise
                except Exception as exc:
                    outcome = _outcome(exc)
                    await _abort_for(exc, context, method)
                finally:
                    log_call(started, outcome)

            return wrapped

        def streaming(behaviour: Behaviour) -> Behaviour:
            async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
                if request_id:
                    request_ids.set_current(request_id)
                started, outcome = time.monotonic(), "OK"
                try:
                    _refuse_undecodable(request)
                    result = behaviour(request, context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            yield item
                    else:
                        await result
                except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit) as exc:
                    outcome = _outcome(exc)
                    raise
                except Exception as exc:
                    outcome = _outcome(exc)
                    await _abort_for(exc, context, method)
                finally:
                    log_call(started, outcome)

            return wrapped

        # Requests of one message only: a client stream's messages are read by the handler.
        one_request = bool(handler.unary_unary or handler.unary_stream)
        deserializer = _tolerant(handler.request_deserializer) if one_request else None
        return _wrap_handler(handler, unary, streaming, deserializer)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Verifies the bearer token of every non-public call and makes the caller's
    identity available to the handler through a context variable."""

    def __init__(self, verifier: TokenVerifier, public_methods: Iterable[str] = ()) -> None:
        self._verifier = verifier
        self._public = frozenset(public_methods)

    def _is_public(self, method: str) -> bool:
        return method in self._public or method.startswith(ALWAYS_PUBLIC_PREFIXES)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or self._is_public(handler_call_details.method):
            return handler
        verifier = self._verifier
        metadata = handler_call_details.invocation_metadata

        async def identify() -> Any:
            token = bearer_token(metadata)
            if token is None:
                raise Unauthenticated("this call needs an access token: authorization: Bearer <token>")
            return set_identity(await verifier.verify(token))

        def unary(behaviour: Behaviour) -> Behaviour:
            async def wrapped(request: Any, context: Context) -> Any:
                marker = await identify()
                try:
                    return await behaviour(request, context)
                finally:
                    reset_identity(marker)

            return wrapped

        def streaming(behaviour: Behaviour) -> Behaviour:
            async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
                marker = await identify()
                try:
                    async for item in behaviour(request, context):
                        yield item
                finally:
                    reset_identity(marker)

            return wrapped

        return _wrap_handler(handler, unary, streaming)


class InputInterceptor(grpc.aio.ServerInterceptor):
    """Checks every request against the input rules (services/common/input_rules.py:
    control characters, string and repeated-field limits) before any handler or access
    check reads it, and binds page tokens to the List call they belong to
    (services/common/paging.py)."""

    def __init__(self, page_key: bytes) -> None:
        self._page_key = page_key

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler | None:
        handler = await continuation(handler_call_details)
        # Client streams (only reflection has one) are read message by message by their handler.
        if handler is None or not (handler.unary_unary or handler.unary_stream):
            return handler
        method = handler_call_details.method
        page_key = self._page_key

        def check(request: Any) -> None:
            if not isinstance(request, Message):  # a handler registered without a deserializer
                return
            input_rules.check_request(request)
            if paging.has_page_token(request):
                paging.bind_call(page_key, method, request)

        def unary(behaviour: Behaviour) -> Behaviour:
            async def wrapped(request: Any, context: Context) -> Any:
                check(request)
                return await behaviour(request, context)

            return wrapped

        def streaming(behaviour: Behaviour) -> Behaviour:
            async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
                check(request)
                async for item in behaviour(request, context):
                    yield item

            return wrapped

        return _wrap_handler(handler, unary, streaming)


def create_server(
    *,
    verifier: TokenVerifier,
    public_methods: Iterable[str] = (),
    roles: RoleLookup | None = None,
    page_key: bytes | None = None,
    service: str = "unnamed",
) -> grpc.aio.Server:
    """`page_key` signs page tokens (paging.key_from_secret); every replica of a service
    must get the same one, or a token from one replica is refused by another."""
    # Order matters: metrics and the trace outermost (they see the final status), then errors,
    # then who is calling, then is the request well formed, then may they
    # (services/common/authz.py) — which reads the names the request holds.
    public = [*public_methods, *authz_public_methods()]
    inputs = InputInterceptor(page_key if page_key is not None else paging.key_from_secret(""))
    return grpc.aio.server(
        interceptors=[
            TelemetryInterceptor(service),
            ErrorInterceptor(),
            AuthInterceptor(verifier, public),
            inputs,
            AuthzInterceptor(roles),
        ],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )


def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str], reflected_names: Iterable[str] | None = None
) -> health.aio.HealthServicer:
    """Register the standard health service (every listed service SERVING once started)
    and server reflection for grpcurl, listing `reflected_names` (default: the services)."""
    names = list(service_names if reflected_names is None else reflected_names)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    return health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, service_names: Iterable[str]) -> None:
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


class BackgroundTaskDied(RuntimeError):
    """A job worker or event consumer of this process ended with an error."""


async def serve_until_signalled(
    server: grpc.aio.Server,
    listen_addr: str,
    health_servicer: health.aio.HealthServicer,
    service_names: Iterable[str],
    background: Iterable[Callable[[asyncio.Event], Awaitable[None]]] = (),
    grace_seconds: float = 10.0,
) -> None:
    """Start the server, mark it SERVING, run background tasks (job workers), and stop
    gracefully on SIGTERM or SIGINT: NOT_SERVING first, then finish calls in flight."""
    names = list(service_names)
    port = server.add_insecure_port(listen_addr)
    if port == 0:
        raise RuntimeError(f"could not listen on {listen_addr}")
    await server.start()
    await set_serving(health_servicer, names)
    log.info("serving %s on %s", ", ".join(names), listen_addr)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    died: list[tuple[str, BaseException]] = []

    def supervise(task: asyncio.Task[None]) -> None:
        # A worker or consumer loop that dies leaves a service that looks healthy but does
        # no work: stop serving and exit non-zero, so the supervisor restarts the process.
        if task.cancelled() or stop.is_set() or task.exception() is None:
            return
        error = task.exception()
        assert error is not None
        log.critical("background task %s died; stopping so this process is restarted", task.get_name(), exc_info=error)
        died.append((task.get_name(), error))
        stop.set()

    async def run(job: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        await job(stop)

    tasks = []
    for job in background:
        task = asyncio.create_task(run(job), name=getattr(job, "__qualname__", "background task"))
        task.add_done_callback(supervise)
        tasks.append(task)

    waiter = asyncio.create_task(stop.wait())
    terminated = asyncio.create_task(server.wait_for_termination())
    await asyncio.wait({waiter, terminated}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    log.info("stopping (grace %.0f s)", grace_seconds)
    await health_servicer.enter_graceful_shutdown()
    if tasks:
        await asyncio.wait(tasks, timeout=grace_seconds)
        for task in tasks:
            task.cancel()
    await server.stop(grace_seconds)
    terminated.cancel()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    if died:
        name, error = died[0]
        raise BackgroundTaskDied(f"background task {name} died: {type(error).__name__}: {error}") from error


def configure_logging(level: str, log_format: str = "plain") -> None:
    """Every line names the request it belongs to: the x-request-id Envoy logs too. JSON
    lines (EMBEDVIZ_LOG_FORMAT=json) also carry the trace and span ids."""
    handler = logging.StreamHandler()
    handler.addFilter(request_ids.RequestIdFilter())
    handler.addFilter(telemetry.TraceFilter())
    if log_format == "json":
        handler.setFormatter(telemetry.JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
