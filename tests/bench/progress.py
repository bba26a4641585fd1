"""make bench BENCH=progress — how long a job's progress event takes from NATS to the browser.

A real stack on free ports (embedded PostgreSQL and NATS, auth, ingest, embedding with no
embedding worker, the web file server and Envoy from envoy.yaml). A user signs up, imports
a small table and asks for an embedding of it; with no worker the job stays queued, so
nothing but this bench moves its progress. The web client in headless Chromium
(gateway/web/e2e/progress-latency.mjs, through playwright-core) logs in as that user and
opens the dataset: the workspace follows the running job over WatchEmbedding (grpc-web
through Envoy) and renders each update in its progress bars.

Then BENCH_PROGRESS_EVENTS (60) progress events are published one at a time on the job's
subject, `events.embedding.<id>`, in the EMBEDVIZ_EVENTS JetStream stream, exactly as a
worker's JobReporter publishes them (the Embedding message, state RUNNING, rows done, an
update time, and the stage `event-N` so each one can be told apart on the page), with a
random pause of 50–250 ms between them. For each event, from the moment before the publish
call (time.time()) to the moment it arrived:

- peer: a plain NATS subscriber on the same subject in this process (the floor: NATS alone);
- gRPC Watch: WatchEmbedding straight to the embedding service, no edge (the service's
  ordered JetStream consumer, decode, gRPC);
- browser: the page's progress text changed (a MutationObserver), and the first animation
  frame after it began (the frame that paints it) — NATS, the service, Envoy's grpc-web
  translation, connect-web in the page, followJob and the progress bar. The page's times come
  from its own clock (performance.timeOrigin + performance.now(), Unix epoch ms); the script
  checks it against Date.now() and reports the difference.

The first BENCH_PROGRESS_WARMUP (5) events are left out of the figures. Prints
`bench progress p50_ms=A p95_ms=B peer_p50_ms=C ratio=R` (browser frame; R = peer p50 / browser
p50, as every ratio in the report: above 1 ours is faster) and a table."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "gateway" / "web"
sys.path[:0] = [str(ROOT), str(ROOT / "build" / "gen" / "python")]

import numpy as np  # noqa: E402

EVENTS = int(os.environ.get("BENCH_PROGRESS_EVENTS", "60"))
WARMUP = int(os.environ.get("BENCH_PROGRESS_WARMUP", "5"))
COMPONENTS = "postgres,nats,auth,ingest,embedding,web,edge"


class Page:
    """The browser half (progress-latency.mjs) as a child process speaking JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: dict[int, tuple[float, float]] = {}
        self.ready = asyncio.Event()
        self.final: dict[str, Any] = {}
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("ready"):
                self.ready.set()
            elif "seen" in line:
                self.seen[int(line["seen"])] = (line["dom"] / 1000, line["frame"] / 1000)
                self.changed.set()
            elif "ok" in line:
                self.final = line
        self.ready.set()
        self.changed.set()

    async def close(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            self.proc.kill()
        await self.reader
        return self.final


async def measure(stack: Any) -> dict[str, Any]:
    import nats
    from google.protobuf.timestamp_pb2 import Timestamp

    from embedviz.v1 import embedding_pb2, job_pb2
    from services.common.events import EVENTS_STREAM, event_subject
    from tests.support.world import PASSWORD, Stubs

    stubs = Stubs(stack)
    nc = await nats.connect(stack.nats_url, name="bench-progress")
    page: Page | None = None
    watch_task: asyncio.Task[None] | None = None
    try:
        person = await stubs.sign_up("progress-bench")
        project = await stubs.make_project(person, "progress bench")
        dataset = await stubs.make_dataset(person, project, n_rows=50)
        name = await stubs.make_embedding(person, dataset, wait=False)
        current = await stubs.embedding.GetEmbedding(embedding_pb2.GetEmbeddingRequest(name=name), metadata=person.md)
        assert current.job.state == job_pb2.JOB_STATE_PENDING, current.job
        subject = event_subject("embedding", name.rsplit("/", 1)[1])

        peer_seen: dict[int, float] = {}
        grpc_seen: dict[int, float] = {}
        arrived = asyncio.Event()

        def number(message: embedding_pb2.Embedding) -> int:
            stage = message.job.stage
            return int(stage.removeprefix("event-")) if stage.startswith("event-") else 0

        async def on_nats(msg: Any) -> None:
            n = number(embedding_pb2.Embedding.FromString(msg.data))
            if n:
                peer_seen.setdefault(n, time.time())
                arrived.set()

        await nc.subscribe(subject, cb=on_nats)

        async def follow_grpc() -> None:
            async for update in stubs.embedding.WatchEmbedding(
                embedding_pb2.WatchEmbeddingRequest(name=name), metadata=person.md
            ):
                n = number(update.embedding)
                if n:
                    grpc_seen.setdefault(n, time.time())
                    arrived.set()

        watch_task = asyncio.create_task(follow_grpc())

        proc = await asyncio.create_subprocess_exec(
            "node", "e2e/progress-latency.mjs", "--base-url", stack.edge_url, "--email", person.email,
            "--password", PASSWORD, "--dataset", dataset, cwd=WEB, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        page = Page(proc)
        await asyncio.wait_for(page.ready.wait(), 180)
        if proc.returncode is not None or not (page.ready.is_set() and not page.final):
            raise SystemExit(f"bench progress: the browser did not get ready: {page.final}")

        js = nc.jetstream()
        published: dict[int, float] = {}
        rng = random.Random(5)
        total = EVENTS * 100
        for n in range(1, EVENTS + 1):
            event = embedding_pb2.Embedding()
            event.CopyFrom(current)
            event.job.state = job_pb2.JOB_STATE_RUNNING
            event.job.stage = f"event-{n}"
            event.job.done, event.job.total = n * 100, total
            event.job.progress = n / EVENTS
            stamp = Timestamp()
            stamp.GetCurrentTime()
            event.job.update_time.CopyFrom(stamp)
            data = event.SerializeToString()
            published[n] = time.time()
            await js.publish(subject, data, stream=EVENTS_STREAM)
            deadline = time.monotonic() + 20
            while not (n in peer_seen and n in grpc_seen and n in page.seen):
                if time.monotonic() > deadline:
                    missing = [w for w, d in (("nats", peer_seen), ("grpc", grpc_seen), ("browser", page.seen))
                               if n not in d]
                    raise SystemExit(f"bench progress: event {n} never reached {', '.join(missing)}")
                arrived.clear()
                page.changed.clear()
                waits = [asyncio.ensure_future(arrived.wait()), asyncio.ensure_future(page.changed.wait())]
                await asyncio.wait(waits, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
            await asyncio.sleep(rng.uniform(0.05, 0.25))
        browser_seen = page.seen
        final = await page.close()
        page = None
        if not final.get("ok"):
            raise SystemExit(f"bench progress: the browser side failed: {final}")
        counted = range(WARMUP + 1, EVENTS + 1)

        def ms(seen: dict[int, float]) -> np.ndarray:
            return np.array([(seen[n] - published[n]) * 1000 for n in counted])

        return {
            "nats": ms(peer_seen),
            "grpc": ms(grpc_seen),
            "dom": ms({n: t[0] for n, t in browser_seen.items()}),
            "frame": ms({n: t[1] for n, t in browser_seen.items()}),
            "in_order": sorted(browser_seen) == list(range(1, EVENTS + 1)),
            "page": final,
        }
    finally:
        if page is not None:
            await page.close()
        if watch_task is not None:
            watch_task.cancel()
        await nc.close()
        await stubs.close()


def main() -> int:
    from services.stack import Stack
    from tests.bench.report import Result, env_settings

    if not shutil.which("node") or not Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")).exists():
        print("bench progress: needs node and /usr/bin/chromium (or $CHROMIUM_PATH); `make chromium`")
        return 1
    if not (WEB / "dist" / "index.html").exists():
        print("bench progress: the web client is not built; run `make web` first")
        return 1
    result = Result(
        "progress", "Progress latency: a job's progress event from its publication on NATS to the browser",
        env_settings("BENCH_PROGRESS_EVENTS", "BENCH_PROGRESS_WARMUP"),
    )
    work = Path(tempfile.mkdtemp(prefix="embedviz-bench-progress-"))
    work.chmod(0o755)
    stack = Stack(work / "stack", components=COMPONENTS, ports="free",
                  environ={**os.environ, "EMBEDVIZ_EMBED_WORKERS": "0"})
    try:
        t = time.perf_counter()
        stack.start()
        print(f"stack up in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        got = asyncio.run(measure(stack))
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)

    def pct(values: np.ndarray) -> tuple[float, float, float]:
        return tuple(float(np.percentile(values, q)) for q in (50, 95, 100))  # type: ignore[return-value]

    rows = {
        "nats": "peer: plain NATS subscriber (nats-py, this process)",
        "grpc": "WatchEmbedding, gRPC straight to the embedding service",
        "dom": "browser: progress text changed in the DOM (grpc-web via Envoy)",
        "frame": "browser: first animation frame after the change",
    }
    count = len(got["nats"])
    print(f"\nprogress events published on NATS -> seen, {count} events "
          f"(after {WARMUP} warm-up ones), ms from just before the publish call")
    print(f"{'where':<66} {'p50':>7} {'p95':>7} {'max':>7}")
    for key, label in rows.items():
        p50, p95, top = pct(got[key])
        print(f"{label:<66} {p50:>7.2f} {p95:>7.2f} {top:>7.2f}")
    page = got["page"]
    frame50, frame95, _ = pct(got["frame"])
    dom50, dom95, _ = pct(got["dom"])
    nats50, nats95, _ = pct(got["nats"])
    grpc50, grpc95, _ = pct(got["grpc"])
    print(f"page clock - Date.now(): {page['clockSkewMs']:.2f} ms; every event shown, in order: {got['in_order']}; "
          f"{page['userAgent']}")
    summary = (f"bench progress p50_ms={frame50:.1f} p95_ms={frame95:.1f} peer_p50_ms={nats50:.2f} "
               f"ratio={nats50 / frame50:.3f}")
    print(summary)
    what = f"NATS publish to seen, {count} events"
    result.compare(f"{what}, p50", ours=frame50, peer=nats50, unit="ms", ours_is="browser, the frame that shows it",
                   peer_is="plain NATS subscriber", lower_is_better=True, added_ms=frame50 - nats50)
    result.compare(f"{what}, p95", ours=frame95, peer=nats95, unit="ms", ours_is="browser, the frame that shows it",
                   peer_is="plain NATS subscriber", lower_is_better=True, added_ms=frame95 - nats95)
    result.compare(f"{what}, p50", ours=dom50, peer=nats50, unit="ms", ours_is="browser, DOM updated",
                   peer_is="plain NATS subscriber", lower_is_better=True, p95_ms=dom95)
    result.compare(f"{what}, p50", ours=grpc50, peer=nats50, unit="ms", ours_is="gRPC WatchEmbedding, no edge",
                   peer_is="plain NATS subscriber", lower_is_better=True, p95_ms=grpc95)
    result.note(f"The events are published by the bench, as a worker's JobReporter publishes them (after its "
                f"database write, which is not counted); pause between events 50-250 ms. The page's clock differed "
                f"from Date.now() by {page['clockSkewMs']:.2f} ms; {page['userAgent']}.")
    if not got["in_order"]:
        result.note("Some events were not shown on their own: the page rendered a later one first.")
    result.write(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
