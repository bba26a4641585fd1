"""A plain text progress bar on stderr for uploads, imports, embeddings and maps.

On a terminal the line redraws in place (at most ten times a second); into a pipe or a
file it writes a new line only when the stage changes or another tenth is done, so a log
stays short."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from embedviz.v1 import job_pb2

WIDTH = 24


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _seconds(value: float) -> str:
    value = max(0, round(value))
    if value < 60:
        return f"{value}s"
    minutes, seconds = divmod(value, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def bar(fraction: float) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(round(fraction * WIDTH))
    return "[" + "#" * filled + "." * (WIDTH - filled) + f"] {fraction * 100:3.0f}%"


class ProgressLine:
    """One live line on a stream (stderr by default); `enabled=False` makes it silent."""

    def __init__(self, label: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.label = label
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self._last_draw = 0.0
        self._last_key: tuple[str, int] | None = None
        self._width = 0
        self._open = False
        self._started = time.monotonic()

    def show(self, text: str, fraction: float, stage: str = "") -> None:
        if not self.enabled:
            return
        line = f"{self.label:<10} {bar(fraction)}  {text}".rstrip()
        now = time.monotonic()
        if self.live:
            if now - self._last_draw < 0.1 and fraction < 1.0:
                return
            padding = " " * max(0, self._width - len(line))
            self.stream.write("\r" + line + padding)
            self._width = len(line)
            self._open = True
        else:
            key = (stage, int(fraction * 10))
            if key == self._last_key:
                return
            self._last_key = key
            self.stream.write(line + "\n")
        self._last_draw = now
        self.stream.flush()

    def bytes_sent(self, done: int, total: int) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = done / elapsed
        text = f"{_bytes(done)} / {_bytes(total)}  {_bytes(rate)}/s"
        self.show(text, done / total if total else 1.0, "bytes")

    def bytes_received(self, done: int) -> None:
        if not self.enabled:
            return
        line = f"{self.label:<10} {_bytes(done)}"
        if self.live:
            self.stream.write("\r" + line)
            self._width = len(line)
            self._open = True
            self.stream.flush()

    def job(self, job: job_pb2.Job) -> None:
        parts = [job.stage or job_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()]
        if job.total:
            parts.append(f"{_count(job.done)}/{_count(job.total)}")
        if job.rate:
            parts.append(f"{_count(job.rate)}/s")
        if job.eta_seconds and job.state == job_pb2.JOB_STATE_RUNNING:
            parts.append(f"eta {_seconds(job.eta_seconds)}")
        finished = job.state == job_pb2.JOB_STATE_SUCCEEDED
        self.show("  ".join(parts), 1.0 if finished else job.progress, job.stage)

    def finish(self, message: str = "") -> None:
        if not self.enabled:
            return
        if self._open:
            self.stream.write("\n")
            self._open = False
        if message:
            self.stream.write(f"{self.label:<10} {message}\n")
        self.stream.flush()
