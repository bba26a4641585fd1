"""The API contract: buf lint passes, and the generated Python code matches the protos
(it is built by `make proto`, never edited by hand)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUF = REPO / "gateway" / "web" / "node_modules" / ".bin" / "buf"


def test_buf_lint_passes() -> None:
    assert BUF.exists(), "buf is missing: run `make web-deps`"
    result = subprocess.run([str(BUF), "lint"], cwd=REPO / "protos", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_python_is_current() -> None:
    protos = sorted(str(p.relative_to(REPO / "protos")) for p in (REPO / "protos").rglob("*.proto"))
    with tempfile.TemporaryDirectory() as out:
        plugins = Path(sys.executable).parent  # mypy-protobuf's, as `make proto` uses them
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "protos"),
             f"--python_out={out}", f"--grpc_python_out={out}",
             f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}", f"--mypy_out=quiet:{out}",
             f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}", f"--mypy_grpc_out=quiet:{out}",
             *protos],
            check=True, timeout=120,
        )
        fresh = {p.relative_to(out): p.read_bytes() for p in Path(out).rglob("*.py*")}
    built = REPO / "build" / "gen" / "python"
    stale = [
        str(name)
        for name, content in fresh.items()
        if not (built / name).exists() or (built / name).read_bytes() != content
    ]
    assert not stale, f"generated code is stale, run `make proto`: {stale}"
