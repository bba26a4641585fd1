"""Shared fixtures: the real system on free ports in a temporary folder.

- `stack`: everything (embedded PostgreSQL and NATS, the four services, the edge), once per
  test session. Talk to it through `stack.addrs[...]`, `stack.edge_url`, `stack.env`.
- `infra`: only PostgreSQL and NATS, for tests of the shared package and of single services.
  Separate servers from `stack`, so the stack's workers never take a single-service test's jobs.

On teardown every process is stopped and the logs are copied to test-artifacts/logs/
so a failed CI run can be read afterwards.

`make test` runs the suites in two processes (pytest-xdist, `--dist loadfile`): a test
module runs whole in one process, so its module fixtures start once; each process starts
its own `stack` and `infra` when one of its modules asks for them. The modules that take
longest are handed out first (`SLOWEST_FIRST`), and the time each module took is written
to test-artifacts/module-times.txt to keep that list honest.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.stack import Stack

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "logs"
# The modules that take longest on a 2-core machine, longest first (measured; see
# test-artifacts/module-times.txt). They start first, so no process is left with one of
# them at the end while the other idles. Every other module follows in its usual order.
SLOWEST_FIRST = (
    "tests/projection/test_numba_once.py",
    "tests/embedding/test_workers.py",
    "tests/test_web_client.py",
    "tests/faults/test_kills.py",
    "tests/faults/test_scale_out.py",
    "tests/faults/test_shared_parts.py",
    "tests/projection/test_fit_processes.py",
    "tests/test_long_jobs.py",
    "tests/test_fuzz.py",
    "tests/projection/test_worker_crash.py",
    "tests/projection/test_depth.py",
    "tests/test_outbox.py",
    "tests/projection/test_map_resume.py",
    "tests/test_s3_whole_path.py",
)

# A projection service warms numba in each fitting process as it starts: it compiles the
# approximate-neighbour path (pynndescent), which numba cannot cache, for ~100 s of CPU per
# process. No test here maps more than 4,096 rows, so none takes that path: the test
# stacks skip the warm-up and a first UMAP job compiles what it uses (the exact path, far
# less). tests/projection/test_numba_once.py checks the warm-up itself.
os.environ.setdefault("EMBEDVIZ_PROJECTION_WARM_UP", "0")

# Two cores, and while the suite runs, two to four stacks' processes share them. A process
# that spreads its math over both cores (torch's and OpenBLAS's OpenMP threads, which
# spin while they wait) then fights the others for them: embedding 3,000 Debian summaries
# took 40 s of CPU with two torch threads beside one busy core, 19.5 s with one (18 s
# either way on a quiet machine). So every process the tests start does its math on one
# thread; production keeps its default (EMBEDVIZ_TORCH_THREADS=0: up to two).
for _name in ("EMBEDVIZ_TORCH_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

# Every process of this session's stacks writes the spans of traces a client marked sampled
# to files in one folder per test process (tests/test_observability.py reads them); nothing
# else is recorded (parent-based sampling, off at the root), so the rest of the suite pays
# next to nothing for it. Set here, before any stack starts.
if "EMBEDVIZ_TRACES_DIR" not in os.environ:
    os.environ["EMBEDVIZ_TRACES_DIR"] = tempfile.mkdtemp(prefix="embedviz-traces-")
    atexit.register(shutil.rmtree, os.environ["EMBEDVIZ_TRACES_DIR"], True)
os.environ.setdefault("OTEL_TRACES_SAMPLER", "parentbased_always_off")

_stacks: dict[str, Stack] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--keep-data",
        action="store_true",
        help="keep the stack's temporary data folder (Postgres, NATS, blobs) after the run",
    )


def _data_root(config: pytest.Config) -> Path:
    # /tmp itself, not pytest's tmp_path: as root, Postgres runs as `nobody`, which must be
    # able to reach its data folder, and pytest's folders are private to the user.
    root = Path(tempfile.mkdtemp(prefix="embedviz-test-"))
    root.chmod(0o755)
    config.stash[_ROOTS].append(root)
    return root


_ROOTS = pytest.StashKey[list[Path]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ROOTS] = []


def _worker_suffix() -> str:
    """"-gw1" in the second pytest-xdist process; "" when the tests run in one process."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return f"-{worker}" if worker else ""


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}

    def key(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return rank.get(path, len(rank))

    items.sort(key=key)  # stable: within a module, and among the rest, the order stays


_module_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # In the controlling process this hears every process's reports (setup, call, teardown).
    _module_seconds[report.nodeid.split("::", 1)[0]] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput") or not _module_seconds:
        return  # a pytest-xdist worker: the controller writes the file
    lines = [f"{seconds:8.1f} s  {module}" for module, seconds in sorted(_module_seconds.items(), key=lambda m: -m[1])]
    out = REPO_ROOT / "test-artifacts" / "module-times.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text("seconds per test module (setup + tests + teardown)\n" + "\n".join(lines) + "\n")


def _collect_logs(stack: Stack, name: str) -> None:
    target = ARTIFACTS / name
    if stack.logs_dir.exists():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(stack.logs_dir, target)


def _start(request: pytest.FixtureRequest, name: str, components: str) -> Iterator[Stack]:
    stack = Stack(_data_root(request.config) / name, components=components, ports="free")
    name += _worker_suffix()
    _stacks[name] = stack
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        _collect_logs(stack, name)
        _stacks.pop(name, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    for stack in list(_stacks.values()):
        stack.stop()
    if not config.getoption("--keep-data", default=False):
        for root in config.stash.get(_ROOTS, []):
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The whole system, started once for the session."""
    yield from _start(request, "stack", "all")


@pytest.fixture(scope="session")
def infra(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """PostgreSQL and NATS only, never shared with the full stack: single-service tests run
    their own service instances on these, and the stack's workers must not take their jobs."""
    yield from _start(request, "infra", "infra")


@pytest.fixture(scope="session")
def stack_env(stack: Stack) -> Iterator[dict[str, str]]:
    """os.environ with the stack's EMBEDVIZ_* settings, for tests that run clients as processes."""
    yield {**os.environ, **stack.env}
