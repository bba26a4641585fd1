"""What a process tells about itself (docs/observability.md): Prometheus metrics on an HTTP
port of its own (`EMBEDVIZ_METRICS_ADDR`), OpenTelemetry traces that follow a call from the
edge through every service and over NATS into the workers (W3C `traceparent` in gRPC
metadata and in NATS message headers), and the fields that tie a log line to both.

Metrics and the tracer provider are process-wide by nature (one /metrics page, one
exporter per process), so they live here once rather than in `Deps`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import prometheus_client
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

log = logging.getLogger(__name__)

TRACER = trace.get_tracer("embedviz")  # a proxy: no-op until `start` installs a provider

# gRPC status codes a server span is marked failed for (a client's mistake is not the server's).
SERVER_ERRORS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})

# --- metrics -----------------------------------------------------------------------------------

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` twin of every counter

RPC_HANDLED = prometheus_client.Counter(
    "embedviz_rpc_server_handled",
    "gRPC calls this process served, by method and the status code they ended with",
    ["service", "grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = prometheus_client.Histogram(
    "embedviz_rpc_server_handling_seconds",
    "How long gRPC calls took to serve (server streams: until the stream ended)",
    ["service", "grpc_type", "grpc_service", "grpc_method", "grpc_code"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120, 600),
)
JOB_RUNS = prometheus_client.Counter(
    "embedviz_job_runs",
    "Job runs (one delivery of a job's message to a worker of this process), by how they ended",
    ["service", "kind", "outcome"],
)
JOB_SECONDS = prometheus_client.Histogram(
    "embedviz_job_run_seconds",
    "How long job runs took, by how they ended",
    ["service", "kind", "outcome"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
JOBS_RUNNING = prometheus_client.Gauge(
    "embedviz_jobs_running", "Job runs in progress in this process", ["service", "kind"]
)
JOB_ROWS = prometheus_client.Counter(
    "embedviz_job_rows", "Rows the running jobs of this process got through (as their progress said)",
    ["service", "kind"],
)
JOB_ROWS_PER_SECOND = prometheus_client.Gauge(
    "embedviz_job_rows_per_second",
    "Rows per second of the jobs running in this process, added up (their last progress report)",
    ["service", "kind"],
)
QUEUE_PENDING = prometheus_client.Gauge(
    "embedviz_queue_pending_messages",
    "Messages a durable consumer has not been handed yet (JetStream consumer info)",
    ["service", "stream", "consumer"],
)
QUEUE_ACK_PENDING = prometheus_client.Gauge(
    "embedviz_queue_ack_pending_messages",
    "Messages handed to a consumer's workers and not acknowledged yet (jobs in hand)",
    ["service", "stream", "consumer"],
)

_state: dict[str, str] = {"service": "unnamed"}


def service() -> str:
    """The name `start` gave this process ("embedding", "embedding-worker", ...)."""
    return _state["service"]


class RowRates:
    """The rows per second of each job run of this process (as its progress reports say),
    added up by kind at each scrape into embedviz_job_rows_per_second; a run that has not
    reported for STALE_S seconds, or has ended, no longer counts."""

    STALE_S = 30.0

    def __init__(self) -> None:
        self._runs: dict[tuple[str, Hashable], tuple[float, int, float]] = {}  # -> (when, done, rate)
        self._kinds: set[str] = set()

    def report(self, kind: str, run: Hashable, done: int, rate: float | None = None) -> None:
        """`run` reached `done` rows; without a `rate`, the rate since its last report."""
        now = time.monotonic()
        before = self._runs.get((kind, run))
        if before is not None and done > before[1]:
            JOB_ROWS.labels(service(), kind).inc(done - before[1])
        if rate is None:
            rate = (done - before[1]) / (now - before[0]) if before is not None and now > before[0] else 0.0
        for key in [k for k, (when, _, _) in self._runs.items() if now - when > 4 * self.STALE_S]:
            del self._runs[key]
        self._runs[(kind, run)] = (now, done, max(rate, 0.0))
        if kind not in self._kinds:
            self._kinds.add(kind)
            JOB_ROWS_PER_SECOND.labels(service(), kind).set_function(lambda: self.total(kind))

    def end(self, kind: str, run: Hashable) -> None:
        self._runs.pop((kind, run), None)

    def total(self, kind: str) -> float:
        """Called by the metrics server's thread at a scrape."""
        now = time.monotonic()
        return sum(rate for (k, _), (when, _, rate) in list(self._runs.items())
                   if k == kind and now - when < self.STALE_S)


ROW_RATES = RowRates()


@contextlib.contextmanager
def job_run(kind: str, job_id: str, attempt: int) -> Iterator[JobRunRecord]:
    """Around one run of a job: counted, timed and traced (a span under the message's)."""
    record = JobRunRecord()
    started = time.monotonic()
    JOBS_RUNNING.labels(service(), kind).inc()
    with TRACER.start_as_current_span(
        f"{kind} job", attributes={"embedviz.job.kind": kind, "embedviz.job.id": job_id,
                                   "embedviz.job.attempt": attempt}
    ) as span:
        try:
            yield record
        finally:
            JOBS_RUNNING.labels(service(), kind).dec()
            JOB_RUNS.labels(service(), kind, record.outcome).inc()
            JOB_SECONDS.labels(service(), kind, record.outcome).observe(time.monotonic() - started)
            span.set_attribute("embedviz.job.outcome", record.outcome)
            if record.outcome in ("failed", "given_up"):
                span.set_status(Status(StatusCode.ERROR, record.outcome))


@dataclass
class JobRunRecord:
    # How the run ended (docs/observability.md): succeeded, failed, cancelled, retried,
    # given_up; a run that leaves the runner by an exception was stopped with its worker.
    outcome: str = "interrupted"


# --- trace context over gRPC metadata and NATS headers -----------------------------------------


def trace_headers() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, `tracestate`); empty
    outside a trace."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def context_from(headers: Mapping[str, str] | Sequence[tuple[str, str | bytes]] | None) -> otel_context.Context:
    """The trace context a caller sent (gRPC metadata or NATS headers)."""
    if headers is None:
        return otel_context.Context()
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    carrier = {k.lower(): v for k, v in pairs if isinstance(v, str)}
    return propagate.extract(carrier)


@contextlib.contextmanager
def consumer_span(subject: str, headers: Mapping[str, str] | None, stream: str, consumer: str) -> Iterator[None]:
    """Handling one NATS message, in the trace of whoever published it."""
    with TRACER.start_as_current_span(
        f"{subject} process",
        context=context_from(headers),
        kind=SpanKind.CONSUMER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject,
                    "messaging.consumer.group.name": consumer, "embedviz.stream": stream},
    ):
        yield


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def current_span_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.span_id, "016x") if ctx.is_valid else ""


# --- logs --------------------------------------------------------------------------------------


class TraceFilter(logging.Filter):
    """Adds `trace_id` and `span_id` to every log record ("" outside a trace)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = current_trace_id()
        record.span_id = current_span_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line (EMBEDVIZ_LOG_FORMAT=json): what a log collector indexes."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": service(),
            "request_id": getattr(record, "request_id", "-"),
            "trace_id": getattr(record, "trace_id", ""),
            "span_id": getattr(record, "span_id", ""),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


# --- settings and start ------------------------------------------------------------------------

@dataclass
class Telemetry:
    """What `start` opened in this process; `close` flushes the spans and frees the port."""

    metrics_server: Any = None
    provider: TracerProvider | None = None

    def close(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        if self.provider is not None:
            self.provider.force_flush(5_000)


_provider_installed = False


def start(name: str, metrics: str, otlp: str, traces_dir: str) -> Telemetry:
    """Serve /metrics on `metrics` (if set) and install the tracer provider (if an OTLP
    endpoint or a traces folder is set; otherwise spans cost nothing and go nowhere)."""
    global _provider_installed
    _state["service"] = name
    done = Telemetry()
    if metrics:
        host, _, port = metrics.rpartition(":")
        done.metrics_server, _thread = prometheus_client.start_http_server(int(port), addr=host.strip("[]"))
        log.info("metrics on http://%s/metrics", metrics)
    if (otlp or traces_dir) and not _provider_installed:
        provider = TracerProvider(resource=Resource.create({"service.name": f"embedviz-{name}"}))
        if otlp:
            # imported here: only a process that exports over OTLP loads it (and requests)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            log.info("traces go to %s (OTLP/HTTP)", otlp)
        if traces_dir:
            exporter = SpanFile(Path(traces_dir), name)
            provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
            log.info("traces are written to %s", exporter.path)
        trace.set_tracer_provider(provider)
        _provider_installed = True
        done.provider = provider
    return done


def _hex(value: int | None, width: int) -> str:
    return format(value, f"0{width}x") if value else ""


class SpanFile(SpanExporter):
    """A span exporter that appends one JSON object a finished span to
    `<folder>/<process>-<pid>.jsonl` (EMBEDVIZ_TRACES_DIR): traces on one machine with no
    collector, and what the tests read."""

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}-{os.getpid()}.jsonl"
        self._file = self.path.open("a", encoding="utf-8")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            ctx = span.get_span_context()
            if ctx is None:
                continue
            self._file.write(json.dumps({
                "trace_id": _hex(ctx.trace_id, 32),
                "span_id": _hex(ctx.span_id, 16),
                "parent_span_id": _hex(span.parent.span_id if span.parent else None, 16),
                "name": span.name,
                "kind": span.kind.name,
                "service": span.resource.attributes.get("service.name", ""),
                "start_ns": span.start_time,
                "end_ns": span.end_time,
                "status": span.status.status_code.name,
                "attributes": {k: v if isinstance(v, (str, int, float, bool)) else str(v)
                               for k, v in (span.attributes or {}).items()},
            }) + "\n")
        self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        self._file.flush()
        return True


__all__ = [
    "ROW_RATES",
    "TRACER",
    "JsonFormatter",
    "Telemetry",
    "TraceFilter",
    "consumer_span",
    "context_from",
    "job_run",
    "start",
    "trace_headers",
]
