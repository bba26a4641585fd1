"""make load — many simulated users through the edge (Envoy) for a fixed time, while uploads
and jobs run; prints requests per second and p50/p95/p99 per RPC, the errors by gRPC code,
and each part's memory at the start and the end. docs/load.md says what it does and what it
measured.

By default it starts its own stack on free ports in a temporary folder (`Stack(...,
ports="free")`: embedded PostgreSQL and NATS, the four services and the real Envoy) and
removes it afterwards; with LOAD_EDGE it loads a stack that is already running (`make run`:
LOAD_EDGE=http://127.0.0.1:8080), signing up its own people there, or logging in as
LOAD_EMAIL / LOAD_PASSWORD, and deleting the projects it made when it is done.

Settings (environment, or make variables: `make load LOAD_USERS=40`):
  LOAD_USERS     simulated users, browser tabs (20)
  LOAD_SECONDS   how long they run (60); SOAK=1 makes it 600 and samples memory every 10 s
  LOAD_ACCOUNTS  people the tabs are spread over, each with a project, dataset and map (4)
  LOAD_ROWS      rows of each person's dataset (1000); LOAD_UPLOAD_ROWS of each upload during the run (400)
  LOAD_UPLOADERS background actors uploading, embedding and mapping during the run (1)
  LOAD_THINK_S   mean pause between a tab's steps (0.5); LOAD_WATCH_S how long a tab watches a job (5)
  LOAD_TRANSPORT grpc-web (as the browser, the default) or grpc (h2c, as the CLI)
  LOAD_EDGE, LOAD_EMAIL, LOAD_PASSWORD, LOAD_KEEP=1 (keep what it made on a running stack)
  LOAD_OUT       the JSON result (build/load/result.json; build/load/soak.json with SOAK=1)
  LOAD_SEED      the tabs' random choices (1)

Exit status 1 when any call failed unexpectedly (the probes' NOT_FOUND is expected)."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "build" / "gen" / "python")]

from google.protobuf import empty_pb2  # noqa: E402

from embedviz.v1 import ingest_pb2  # noqa: E402
from services.stack import Stack  # noqa: E402
from tests.load.report import Calls, Memory, find_parts, print_calls, print_memory  # noqa: E402
from tests.load.users import (  # noqa: E402
    INGEST,
    PASSWORD,
    Account,
    Caller,
    Tab,
    Texts,
    View,
    parquet_bytes,
    set_up,
    sign_in,
    uploader,
)
from tests.load.wire import Browser, open_browser  # noqa: E402


def setting(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclass
class Settings:
    users: int = 20
    seconds: float = 60.0
    soak: bool = False
    accounts: int = 4
    rows: int = 1000
    upload_rows: int = 400
    uploaders: int = 1
    think_s: float = 0.5
    watch_s: float = 5.0
    transport: str = "grpc-web"
    edge: str = ""
    email: str = ""
    password: str = PASSWORD
    keep: bool = False
    seed: int = 1
    out: Path = ROOT / "build" / "load" / "result.json"

    @classmethod
    def from_env(cls) -> Settings:
        soak = setting("SOAK", "0") not in ("0", "")
        email = setting("LOAD_EMAIL", "")
        return cls(
            users=int(setting("LOAD_USERS", "20")),
            seconds=float(setting("LOAD_SECONDS", "600" if soak else "60")),
            soak=soak,
            accounts=1 if email else int(setting("LOAD_ACCOUNTS", "4")),
            rows=int(setting("LOAD_ROWS", "1000")),
            upload_rows=int(setting("LOAD_UPLOAD_ROWS", "400")),
            uploaders=int(setting("LOAD_UPLOADERS", "1")),
            think_s=float(setting("LOAD_THINK_S", "0.5")),
            watch_s=float(setting("LOAD_WATCH_S", "5")),
            transport=setting("LOAD_TRANSPORT", "grpc-web"),
            edge=setting("LOAD_EDGE", ""),
            email=email,
            password=setting("LOAD_PASSWORD", PASSWORD),
            keep=setting("LOAD_KEEP", "0") not in ("0", ""),
            seed=int(setting("LOAD_SEED", "1")),
            out=Path(setting("LOAD_OUT", str(ROOT / "build" / "load" / ("soak.json" if soak else "result.json")))),
        )


TIMEOUT_S = 60.0  # one call's deadline
JOB_TIMEOUT_S = 900.0
SAMPLE_EVERY_S = 10.0


def packages() -> list[tuple[str, str, str]]:
    from tests.projection import debian

    return [(p.name, p.section, p.summary) for p in debian.packages()]


async def load(edge_url: str, memory: Memory, settings: Settings, texts: Texts | None = None) -> dict[str, object]:
    """Set up the people, run the tabs and the uploaders for `settings.seconds`, and return
    what was measured (the calls' summaries, setup time, load averages). The tables are
    slices of `texts` (default: every Debian package apt knows)."""
    s = settings
    texts = texts or Texts(packages())
    setup_calls = Calls()
    calls = Calls()
    browsers = []

    def browser() -> Browser:
        made = open_browser(s.transport, edge_url, TIMEOUT_S)
        browsers.append(made)
        return made

    try:
        # --- the people, each with a project, a dataset, its embedding and a map ---------------
        t = time.perf_counter()
        setup_browser = browser()
        accounts: list[Account] = []
        for i in range(s.accounts):  # one by one: sign-in is rate limited per address at the edge
            accounts.append(await sign_in(setup_browser, setup_calls, s.email or None, s.password, f"load-{i}"))
        tables = [parquet_bytes(texts.table(s.rows)) for _ in accounts]
        await asyncio.gather(*(
            set_up(account, browser(), setup_calls, tables[i], i, JOB_TIMEOUT_S) for i, account in enumerate(accounts)
        ))
        setup_s = time.perf_counter() - t
        print(f"set up {s.accounts} people, each with a project, {s.rows} rows of Debian package descriptions, "
              f"an embedding and a PCA map, in {setup_s:.0f} s", file=sys.stderr, flush=True)

        # --- the load ----------------------------------------------------------------------------
        rng = random.Random(s.seed)
        tabs = [
            Tab(browser(), accounts[i % len(accounts)], accounts, calls, random.Random(rng.random()), s.think_s,
                s.watch_s)
            for i in range(s.users)
        ]
        made: list[View] = []
        started = time.monotonic()
        memory.sample("start", started)
        load_start = os.getloadavg()
        cpu_start = time.process_time()
        tasks = [asyncio.create_task(tab.run()) for tab in tabs]
        tasks += [
            asyncio.create_task(uploader(browser(), accounts, calls, texts, s.upload_rows, JOB_TIMEOUT_S, made))
            for _ in range(s.uploaders)
        ]
        deadline = started + s.seconds
        next_report = started + 30
        while time.monotonic() < deadline:
            await asyncio.sleep(min(SAMPLE_EVERY_S, deadline - time.monotonic()))
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if time.monotonic() < deadline - 1:
                memory.sample("during", started)
            if time.monotonic() >= next_report:
                next_report += 30
                done = sum(len(v) for v in calls.latencies.values())
                print(f"  {time.monotonic() - started:.0f} s: {done} calls, {sum(calls.errors.values())} errors, "
                      f"{len(made)} new maps, load average {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.monotonic() - started
        driver_cpu = time.process_time() - cpu_start
        memory.sample("end", started)
        load_end = os.getloadavg()

        deleted = 0
        if s.edge and not s.keep:  # leave a running stack as it was: the projects go, with all in them
            cleaner = Caller(setup_browser, accounts[0], setup_calls)
            for account in accounts:
                cleaner.account = account
                gone = await cleaner.unary(INGEST + "DeleteProject",
                                           ingest_pb2.DeleteProjectRequest(name=account.project), empty_pb2.Empty)
                deleted += gone is not None
        return {
            "setup_s": setup_s,
            "load": calls.summary(elapsed),
            "setup_calls": setup_calls.summary(max(setup_s, 1e-9)),
            "new_maps": len(made),
            "projects_deleted": deleted,
            "load_average": {"start": load_start, "end": load_end},
            "driver_cpu_s": driver_cpu,  # this process's own CPU during the load: it shares the cores
        }
    finally:
        for b in browsers:
            await b.close()


def machine() -> dict[str, object]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:")), 0)
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gb": round(memory_kb / 1024 / 1024, 1),
            "python": platform.python_version()}


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return out.stdout.strip()


def main() -> int:
    s = Settings.from_env()
    started = time.perf_counter()
    print(f"load: {s.users} users for {s.seconds:.0f} s over {s.transport}, {s.accounts} people, "
          f"{s.uploaders} uploader(s) of {s.upload_rows} rows; "
          f"{'the stack at ' + s.edge if s.edge else 'its own stack on free ports'}",
          file=sys.stderr, flush=True)
    stack = None
    work = None
    try:
        if s.edge:
            pids, ambiguous = find_parts()
            if ambiguous:
                print(f"memory: {', '.join(ambiguous)} found more than once on this machine; left out",
                      file=sys.stderr)
            edge_url = s.edge if "://" in s.edge else f"http://{s.edge}"
        else:
            work = Path(tempfile.mkdtemp(prefix="embedviz-load-"))
            work.chmod(0o755)  # PostgreSQL runs as nobody when this runs as root
            components = "postgres,nats,auth,ingest,embedding,projection,edge"
            stack = Stack(work / "stack", components=components, ports="free")
            t = time.perf_counter()
            stack.start()
            print(f"stack up in {time.perf_counter() - t:.0f} s; edge {stack.edge_url}", file=sys.stderr, flush=True)
            pids = {name: proc.pid for name, proc in stack._procs.items()}
            edge_url = stack.edge_url
        memory = Memory(pids)
        result = asyncio.run(load(edge_url, memory, s))
    finally:
        if stack is not None:
            stack.stop()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)

    summary: dict[str, object] = result["load"]  # type: ignore[assignment]
    result.update({
        "settings": {**{k: v for k, v in asdict(s).items() if k not in ("password", "out")},
                     "edge": s.edge or "own stack"},
        "machine": machine(),
        "commit": commit(),
        "memory": memory.samples,
        "whole_run_s": time.perf_counter() - started,
    })
    s.out.parent.mkdir(parents=True, exist_ok=True)
    s.out.write_text(json.dumps(result, indent=1))

    load_average: dict[str, tuple[float, float, float]] = result["load_average"]  # type: ignore[assignment]
    print_calls(summary, f"{s.users} users for {summary['seconds']:.0f} s through the edge ({s.transport}); "
                         f"latency of Watch* is to the first message, of StreamPoints to the last")
    print_memory(memory.samples)
    m = result["machine"]
    print(f"\nmachine: {m['cores']} cores ({m['cpu']}), load average {load_average['start'][0]:.1f} at the start, "  # type: ignore[index]
          f"{load_average['end'][0]:.1f} at the end; {result['new_maps']} maps made during the run; "
          f"the driver used {result['driver_cpu_s']:.0f} s of CPU during the load; setup {result['setup_s']:.0f} s, "
          f"whole run {result['whole_run_s']:.0f} s; written to {s.out}")
    print(f"load: {summary['per_s']:.1f} requests/s, p50 {summary['p50_ms']:.1f} ms, p95 {summary['p95_ms']:.1f} ms, "
          f"p99 {summary['p99_ms']:.1f} ms, {summary['errors']} errors, {summary['expected_errors']} expected refusals")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
