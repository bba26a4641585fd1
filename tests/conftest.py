"""Shared fixtures: the real system on free ports in a temporary folder.

- `stack`: everything (embedded PostgreSQL and NATS, the four services, the edge), once per
  test session. Talk to it through `stack.addrs[...]`, `stack.edge_url`, `stack.env`.
- `infra`: only PostgreSQL and NATS, for tests of the shared package and of single services.
  Separate servers from `stack`, so the stack's workers never take a single-service test's jobs.

On teardown every process is stopped and the logs are copied to test-artifacts/logs/
so a failed CI run can be read afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.stack import Stack

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "logs"

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


def _collect_logs(stack: Stack, name: str) -> None:
    target = ARTIFACTS / name
    if stack.logs_dir.exists():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(stack.logs_dir, target)


def _start(request: pytest.FixtureRequest, name: str, components: str) -> Iterator[Stack]:
    stack = Stack(_data_root(request.config) / name, components=components, ports="free")
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
