"""Observability (docs/observability.md). On the session's stack: each service's /metrics
counts the calls a client made by method and status code, and one CreateEmbedding sent
through the edge with a client's traceparent is one trace through the edge (Envoy's own
span, received by a real OTLP/gRPC receiver), the embedding service, the work queue, its
worker and the ingest service the worker reads from; an edge with no collector still
serves and still hands its span's context on. In a
process of its own: spans go to the OTLP/HTTP receiver its settings name, and its JSON log
lines name their trace."""

from __future__ import annotations

import contextvars
import http.server
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)
from prometheus_client.parser import text_string_to_metric_families

from embedviz.v1 import embedding_pb2, embedding_pb2_grpc, ingest_pb2, job_pb2
from services.common import request_ids, telemetry
from services.stack import Stack, envoy
from services.stack.stack import free_ports
from tests.support.world import Stubs, eventually

# tests/conftest.py points every stack of the session at a traces folder (EMBEDVIZ_TRACES_DIR).
TRACES_DIR = Path(os.environ["EMBEDVIZ_TRACES_DIR"])


@pytest.fixture(scope="module")
async def stubs(stack: Stack) -> AsyncIterator[Stubs]:
    made = Stubs(stack)
    yield made
    await made.close()


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, by name and labels, read with Prometheus' own parser."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.headers.get_content_type() == "text/plain"
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def handled(service: str, method: str, code: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return ("embedviz_rpc_server_handled_total", frozenset({
        "service": service, "grpc_type": "unary", "grpc_service": "embedviz.v1.IngestService",
        "grpc_method": method, "grpc_code": code,
    }.items()))


async def test_metrics_count_the_calls_a_client_made_by_method_and_code(stack: Stack, stubs: Stubs) -> None:
    owner = await stubs.sign_up("metrics")
    project = await stubs.make_project(owner)
    before = scrape(stack.metrics_url("ingest"))

    await stubs.ingest.GetProject(ingest_pb2.GetProjectRequest(name=project), metadata=owner.md)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stubs.ingest.GetProject(ingest_pb2.GetProjectRequest(name=f"projects/{uuid.uuid4()}"), metadata=owner.md)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    after = scrape(stack.metrics_url("ingest"))
    for code in ("OK", "NOT_FOUND"):
        key = handled("ingest", "GetProject", code)
        assert after[key] - before.get(key, 0.0) == 1, (code, after.get(key))
    latency = ("embedviz_rpc_server_handling_seconds_count", handled("ingest", "GetProject", "NOT_FOUND")[1])
    assert after[latency] - before.get(latency, 0.0) == 1


def spans_of(trace_id: str) -> list[dict[str, Any]]:
    found = []
    for path in TRACES_DIR.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if trace_id in line:
                span = json.loads(line)
                if span["trace_id"] == trace_id:
                    found.append(span)
    return found


class OtlpReceiver(TraceServiceServicer):
    """A real OTLP/gRPC trace receiver: keeps every span sent to it, with its service name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def Export(self, request: ExportTraceServiceRequest, context: grpc.ServicerContext) -> ExportTraceServiceResponse:  # noqa: N802
        with self._lock:
            for resource in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource.resource.attributes}.get("service.name", "")
                self.spans += [(service, span) for scope in resource.scope_spans for span in scope.spans]
        return ExportTraceServiceResponse()

    def of(self, trace_id: str) -> list[tuple[str, Any]]:
        with self._lock:
            return [(service, span) for service, span in self.spans if span.trace_id.hex() == trace_id]


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[str, OtlpReceiver]]:
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", receiver
    server.stop(grace=None)


@pytest.fixture(scope="module")
def traced_edge(stack: Stack, collector: tuple[str, OtlpReceiver],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second Envoy in front of the session's services, as the stack starts its own (the
    local form of envoy.yaml), but with the collector's address: its spans go there."""
    listen, admin = (f"127.0.0.1:{port}" for port in free_ports(2))
    clusters = {name: stack.addrs[name] for name in ("auth", "ingest", "embedding", "projection", "auth_http", "web")}
    config = envoy.write_local_config(tmp_path_factory.mktemp("traced-edge") / "envoy.yaml", listen=listen,
                                      admin=admin, clusters=clusters, collector=collector[0])
    log = config.with_suffix(".log")
    proc = subprocess.Popen([envoy.envoy_binary(), "-c", str(config), "--disable-hot-restart",
                             "--log-level", "warning"], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{admin}/ready", timeout=1.0) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield listen
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def create_embedding(edge: str, stubs: Stubs, name: str, traceparent: str) -> None:
    """CreateEmbedding through `edge` with the client's traceparent, watched to its end."""
    owner = await stubs.sign_up(name)
    project = await stubs.make_project(owner)
    # The rows bring their own vectors: the worker reads them from ingest as it would text,
    # but no model is loaded (whichever test module of this process comes first pays that).
    table = "x,y,z\n" + "".join(f"{i},{i % 3},{-i}\n" for i in range(12))
    dataset = await stubs.upload(owner, project, table.encode(), "vectors.csv")
    async with grpc.aio.insecure_channel(edge) as channel:
        made = await embedding_pb2_grpc.EmbeddingServiceStub(channel).CreateEmbedding(
            embedding_pb2.CreateEmbeddingRequest(
                parent=dataset, embedding=embedding_pb2.Embedding(vector_columns=["x", "y", "z"])
            ),
            metadata=(*owner.md, ("traceparent", traceparent)),
            timeout=30,
        )
    last = None
    async for update in stubs.embedding.WatchEmbedding(
        embedding_pb2.WatchEmbeddingRequest(name=made.name), metadata=owner.md, timeout=120
    ):
        last = update.embedding
    assert last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last


async def test_one_embedding_is_one_trace_from_the_edge_to_the_worker(
    stack: Stack, stubs: Stubs, traced_edge: str, collector: tuple[str, OtlpReceiver]
) -> None:
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    await create_embedding(traced_edge, stubs, "trace", f"00-{trace_id}-{caller_span}-01")

    async def edge_span() -> Any:
        # Envoy sends its spans in batches (every 5 s at the latest).
        mine = [span for service, span in collector[1].of(trace_id) if service == "embedviz-edge"]
        assert mine, collector[1].spans
        return mine

    (edge,) = await eventually(edge_span, timeout=30)
    # Envoy's span continues the caller's trace: the caller's span is its parent.
    assert edge.parent_span_id.hex() == caller_span
    assert edge.kind == edge.SPAN_KIND_SERVER

    async def whole_trace() -> list[dict[str, Any]]:
        spans = spans_of(trace_id)
        names = {(s["service"], s["kind"], s["name"]) for s in spans}
        assert ("embedviz-embedding", "SERVER", "embedviz.v1.EmbeddingService/CreateEmbedding") in names, names
        assert ("embedviz-embedding", "CONSUMER", "work.embedding process") in names, names
        assert ("embedviz-embedding", "INTERNAL", "embedding job") in names, names
        assert any(service == "embedviz-ingest" and kind == "SERVER" for service, kind, _ in names), names
        return spans

    spans = await eventually(whole_trace, timeout=20)
    # Envoy handed its own span's context on: the service's span is the child of Envoy's.
    (created,) = [s for s in spans if s["name"] == "embedviz.v1.EmbeddingService/CreateEmbedding"]
    assert created["parent_span_id"] == edge.span_id.hex()
    assert created["attributes"]["rpc.grpc.status_code"] == 0
    # The worker's run hangs off the message the call queued, which hangs off the call.
    by_id = {s["span_id"]: s for s in spans}
    # (a run per delivery: under load a message can be delivered again, and that run finds
    # the work done; the first that succeeded is the one to follow)
    succeeded = [
        s for s in spans if s["name"] == "embedding job" and s["attributes"]["embedviz.job.outcome"] == "succeeded"
    ]
    assert succeeded, [s["name"] for s in spans]
    job = succeeded[0]
    ancestors = []
    span = job
    while span["parent_span_id"] in by_id:
        span = by_id[span["parent_span_id"]]
        ancestors.append(span["name"])
    assert "work.embedding process" in ancestors and ancestors[-1] == created["name"], ancestors
    assert span["parent_span_id"] == edge.span_id.hex()

    metrics = scrape(stack.metrics_url("embedding"))
    runs = metrics[("embedviz_job_runs_total",
                    frozenset({"service": "embedding", "kind": "embedding", "outcome": "succeeded"}.items()))]
    assert runs >= 1
    depth = [labels for name, labels in metrics if name == "embedviz_queue_pending_messages"]
    assert ("consumer", "embedding-workers") in {pair for labels in depth for pair in labels}


async def test_an_edge_without_a_collector_serves_and_still_continues_the_trace(stack: Stack, stubs: Stubs) -> None:
    # The session's edge: envoy.yaml's collector cluster has no endpoint there.
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    started = time.monotonic()
    await create_embedding(stack.addrs["edge"], stubs, "untraced-edge", f"00-{trace_id}-{caller_span}-01")
    assert time.monotonic() - started < 120

    async def created() -> dict[str, Any]:
        (span,) = [s for s in spans_of(trace_id) if s["name"] == "embedviz.v1.EmbeddingService/CreateEmbedding"]
        return span

    span = await eventually(created, timeout=20)
    # Its parent is Envoy's span (which went nowhere), not the caller's.
    assert span["parent_span_id"] not in ("", caller_span, None), span


# A process as a service starts one: JSON logs, spans to the OTLP receiver named in the
# environment; one line logged inside a span, then the process closes (and flushes).
EXPORTING_PROCESS = """
import logging
from services.common import telemetry
from services.common.config import Settings
from services.common.server import configure_logging

settings = Settings.from_env()
configure_logging(settings.log_level, settings.log_format)
opened = telemetry.start("otlp-check", settings.metrics_addr, settings.otlp_endpoint, settings.traces_dir)
with telemetry.TRACER.start_as_current_span("checking the export"):
    logging.getLogger("embedviz.check").info("inside the span")
opened.close()
"""


def test_spans_go_over_otlp_when_an_endpoint_is_set_and_log_lines_name_their_trace() -> None:
    bodies: list[bytes] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path == "/v1/traces"
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()
            self.wfile.write(ExportTraceServiceResponse().SerializeToString())

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver) as receiver:
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDVIZ_", "OTEL_"))}
        env.update(EMBEDVIZ_LOG_FORMAT="json",
                   OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.server_address[1]}")
        done = subprocess.run([sys.executable, "-c", EXPORTING_PROCESS], env=env, capture_output=True, text=True,
                              timeout=60, cwd=Path(__file__).resolve().parents[1])
        receiver.shutdown()
    assert done.returncode == 0, done.stderr
    spans = []
    for body in bodies:
        sent = ExportTraceServiceRequest.FromString(body)
        for resource in sent.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
            spans += [(service, span) for scope in resource.scope_spans for span in scope.spans]
    assert [(service, span.name) for service, span in spans] == [("embedviz-otlp-check", "checking the export")]
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (inside,) = [line for line in lines if line["message"] == "inside the span"]
    assert inside["trace_id"] == spans[0][1].trace_id.hex() and inside["span_id"] == spans[0][1].span_id.hex()
    assert inside["service"] == "otlp-check" and inside["level"] == "INFO"


def test_json_log_lines_carry_the_request_and_the_trace() -> None:
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, use_span

    record = logging.LogRecord("embedviz.calls", logging.INFO, __file__, 1, "%s done", ("GetProject",), None)
    span = NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1)))

    def in_a_call() -> None:  # a context of its own, as each call has: the request id stays in it
        request_ids.set_current("req-1")
        with use_span(span):
            request_ids.RequestIdFilter().filter(record)
            telemetry.TraceFilter().filter(record)

    contextvars.copy_context().run(in_a_call)
    line = json.loads(telemetry.JsonFormatter().format(record))
    assert line["message"] == "GetProject done" and line["level"] == "INFO"
    assert line["request_id"] == "req-1"
    assert line["trace_id"] == f"{0xABC:032x}" and line["span_id"] == f"{0xDEF:016x}"
