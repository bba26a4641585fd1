"""Observability (docs/observability.md). On the session's stack: each service's /metrics
counts the calls a client made by method and status code, and one CreateEmbedding sent
through the edge with a client's traceparent is one trace through the edge, the embedding
service, the work queue, its worker and the ingest service the worker reads from. In a
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
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from embedviz.v1 import embedding_pb2, embedding_pb2_grpc, ingest_pb2, job_pb2
from services.common import request_ids, telemetry
from services.stack import Stack
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


async def test_one_embedding_is_one_trace_from_the_edge_to_the_worker(stack: Stack, stubs: Stubs) -> None:
    owner = await stubs.sign_up("trace")
    project = await stubs.make_project(owner)
    # The rows bring their own vectors: the worker reads them from ingest as it would text,
    # but no model is loaded (whichever test module of this process comes first pays that).
    table = "x,y,z\n" + "".join(f"{i},{i % 3},{-i}\n" for i in range(12))
    dataset = await stubs.upload(owner, project, table.encode(), "vectors.csv")
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)

    async with grpc.aio.insecure_channel(stack.addrs["edge"]) as edge:
        made = await embedding_pb2_grpc.EmbeddingServiceStub(edge).CreateEmbedding(
            embedding_pb2.CreateEmbeddingRequest(
                parent=dataset, embedding=embedding_pb2.Embedding(vector_columns=["x", "y", "z"])
            ),
            metadata=(*owner.md, ("traceparent", f"00-{trace_id}-{caller_span}-01")),
        )
    last = None
    async for update in stubs.embedding.WatchEmbedding(
        embedding_pb2.WatchEmbeddingRequest(name=made.name), metadata=owner.md, timeout=120
    ):
        last = update.embedding
    assert last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last

    async def whole_trace() -> list[dict[str, Any]]:
        spans = spans_of(trace_id)
        names = {(s["service"], s["kind"], s["name"]) for s in spans}
        assert ("embedviz-embedding", "SERVER", "embedviz.v1.EmbeddingService/CreateEmbedding") in names, names
        assert ("embedviz-embedding", "CONSUMER", "work.embedding process") in names, names
        assert ("embedviz-embedding", "INTERNAL", "embedding job") in names, names
        assert any(service == "embedviz-ingest" and kind == "SERVER" for service, kind, _ in names), names
        return spans

    spans = await eventually(whole_trace, timeout=20)
    # The edge handed the caller's traceparent on as it came: the service's span is its child.
    (created,) = [s for s in spans if s["name"] == "embedviz.v1.EmbeddingService/CreateEmbedding"]
    assert created["parent_span_id"] == caller_span
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

    metrics = scrape(stack.metrics_url("embedding"))
    runs = metrics[("embedviz_job_runs_total",
                    frozenset({"service": "embedding", "kind": "embedding", "outcome": "succeeded"}.items()))]
    assert runs >= 1
    depth = [labels for name, labels in metrics if name == "embedviz_queue_pending_messages"]
    assert ("consumer", "embedding-workers") in {pair for labels in depth for pair in labels}


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
