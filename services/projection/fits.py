"""CPU-heavy fits (UMAP, t-SNE, PCA, clustering, quality, labelling) in child processes
that cancel and shutdown can kill.

Each job worker slot has one long-lived child, `python -m services.projection.fits`,
started with the service; it compiles umap's numba code once in a background thread
(`maps.warm_umap`), so jobs do not pay for it. A job borrows its slot's child for all its
stages (`Fits.session`). Arrays travel through .npy files in a folder of the job's own,
which the child memory-maps; the pipes carry only short JSON lines: a request naming the
call's file, progress `(stage, done, total)` and the name of the result's file.

Killing a child (a cancelled job, a stopping service) stops its CPU use at once: SIGTERM,
then SIGKILL after a short grace. The slot gets a new child when its next job starts, or
`REPLACE_AFTER_SECONDS` later, whichever comes first, so a cancel leaves the CPU idle
instead of starting a warm-up straight away. A child that dies on its own (out of memory)
fails the call with `FitDied`. Children die with their parent (PR_SET_PDEATHSIG, and a
watchdog where that is missing). Plain Python, no gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import pickle
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

log = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 0.5  # SIGTERM first; SIGKILL if the child is still there after this
REPLACE_AFTER_SECONDS = 10.0  # a killed child's replacement starts this late unless a job needs it sooner
INLINE_BYTES = 1 << 20  # arrays at least this large go to .npy files, smaller ones into the pickle
_PARENT_ENV = "EMBEDVIZ_FIT_PARENT"
_LINE_LIMIT = 1 << 20

ProgressCallback = Callable[[str, int, int], object]  # (stage, done, total)


class FitFailed(Exception):
    """The function raised in the child; the message is the child's exception's."""


class FitDied(Exception):
    """The child ended without answering (killed from outside, out of memory, crashed)."""

    def __init__(self, returncode: int | None, stage: str = "") -> None:
        self.returncode = returncode
        self.stage = stage
        super().__init__(describe_exit(returncode) + (f" at stage '{stage}'" if stage else ""))


class FitsStopping(Exception):
    """The pool is closing (the service is stopping): the job goes back to the queue."""


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "the fitting process stopped answering"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (the machine may have run out of memory)" if -returncode == signal.SIGKILL else ""
        return f"the fitting process was killed by {name}{hint}"
    return f"the fitting process exited with status {returncode}"


# --- arrays through files ------------------------------------------------------------------


class _Pickler(pickle.Pickler):
    """Pickles with every large array saved as a .npy file in `folder` (or, for an array
    the session already keeps in a file, that file), referenced by path."""

    def __init__(self, file: IO[bytes], folder: Path, known: dict[int, tuple[np.ndarray, str]]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._folder = folder
        self._known = known

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, np.ndarray) or obj.dtype.hasobject or obj.nbytes < INLINE_BYTES:
            return None
        kept = self._known.get(id(obj))
        if kept is not None and kept[0] is obj:
            return ("npy", kept[1])
        path = self._folder / f"array-{uuid.uuid4().hex[:12]}.npy"
        np.save(path, obj, allow_pickle=False)
        return ("npy", str(path))


# How np.load maps a saved array: read-only, read-write, or copy-on-write.
MmapMode = Literal["r", "r+", "c"]


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], mmap_mode: MmapMode | None) -> None:
        super().__init__(file)
        self._mmap_mode = mmap_mode

    def persistent_load(self, pid: Any) -> Any:
        kind, path = pid
        if kind != "npy":
            raise pickle.UnpicklingError(f"unknown reference {kind!r}")
        return np.load(path, mmap_mode=self._mmap_mode, allow_pickle=False)


def _dump(path: Path, value: Any, known: dict[int, tuple[np.ndarray, str]] | None = None) -> None:
    with open(path, "wb") as file:
        _Pickler(file, path.parent, known or {}).dump(value)


def _load(path: Path, mmap_mode: MmapMode | None) -> Any:
    with open(path, "rb") as file:
        return _Unpickler(file, mmap_mode).load()


# --- the parent's side ---------------------------------------------------------------------


class Child:
    """One child process and the call it is working on."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.killed = False
        self.started = time.monotonic()
        self._call: asyncio.Future[dict[str, Any]] | None = None
        self._on_progress: ProgressCallback | None = None
        self._reader = asyncio.ensure_future(self._read())
        self.on_exit: Callable[[Child], object] | None = None

    @classmethod
    async def start(cls, warm: bool) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.projection.fits",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, _PARENT_ENV: str(os.getpid())},
            limit=_LINE_LIMIT,
        )
        child = cls(process)
        if warm:
            child._send({"warm": True})
        log.info("fitting process %d started%s", process.pid, " (warming up umap)" if warm else "")
        return child

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def alive(self) -> bool:
        return not self.killed and self.process.returncode is None and not self._reader.done()

    def _send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())

    async def request(self, call_file: Path, on_progress: ProgressCallback | None) -> dict[str, Any]:
        if not self.alive:
            raise FitDied(self.process.returncode)
        if self._call is not None and not self._call.done():
            raise RuntimeError("a fitting process runs one call at a time")
        self._call = asyncio.get_running_loop().create_future()
        self._on_progress = on_progress
        self._send({"call": str(call_file)})
        try:
            return await self._call
        finally:
            self._on_progress = None

    async def _read(self) -> None:
        assert self.process.stdout is not None
        try:
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    log.warning("fitting process %d said something unreadable: %r", self.pid, line[:200])
                    continue
                self._handle(message)
        finally:
            code = await self.process.wait()
            if not self.killed:
                log.warning("fitting process %d ended: %s", self.pid, describe_exit(code))
            if self._call is not None and not self._call.done():
                self._call.set_exception(FitDied(code))
            if self.on_exit is not None:
                self.on_exit(self)

    def _handle(self, message: dict[str, Any]) -> None:
        if "progress" in message:
            if self._on_progress is not None:
                stage, done, total = message["progress"]
                self._on_progress(str(stage), int(done), int(total))
        elif "warmed" in message:
            log.info("fitting process %d: umap is compiled and ready (%.0f s)", self.pid, message["warmed"])
        elif "warm_failed" in message:
            log.warning("fitting process %d: warming up umap failed: %s", self.pid, message["warm_failed"])
        elif self._call is not None and not self._call.done():
            if "error" in message:
                self._call.set_exception(FitFailed(str(message["error"])))
            else:
                self._call.set_result(message)

    def kill(self, grace: float = KILL_GRACE_SECONDS) -> None:
        """SIGTERM now (numba's loops do not look at signals, so this ends the process at
        once), SIGKILL after `grace` seconds if it is still there."""
        if self.process.returncode is not None:
            return
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()

        def finish() -> None:
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()

        asyncio.get_running_loop().call_later(grace, finish)

    async def wait(self) -> None:
        with contextlib.suppress(Exception):
            await self._reader


class _Slot:
    """A worker slot: at most one child, started on demand or by the refill timer."""

    def __init__(self, pool: Fits, index: int) -> None:
        self.pool = pool
        self.index = index
        self.child: Child | None = None
        self.starting: asyncio.Task[Child] | None = None
        self.refill: asyncio.TimerHandle | None = None
        self.busy = False

    async def get_child(self) -> Child:
        if self.child is not None and self.child.alive:
            return self.child
        if self.starting is None:
            self.starting = asyncio.ensure_future(self._start())
        try:
            return await asyncio.shield(self.starting)
        finally:
            if self.starting is not None and self.starting.done():
                self.starting = None

    async def _start(self) -> Child:
        if self.pool.closing:
            raise FitsStopping()
        child = await Child.start(self.pool.warm)
        child.on_exit = self._exited
        self.child = child
        if self.pool.closing:  # closed while it started
            child.kill()
            raise FitsStopping()
        return child

    def _exited(self, child: Child) -> None:
        if child is not self.child:
            return
        self.child = None
        if not self.pool.closing:
            self.schedule_refill()

    def schedule_refill(self) -> None:
        if self.refill is not None:
            self.refill.cancel()
        self.refill = asyncio.get_running_loop().call_later(self.pool.replace_after, self._refill)

    def _refill(self) -> None:
        self.refill = None
        if self.pool.closing or self.busy or self.starting is not None or (self.child is not None and self.child.alive):
            return
        self.starting = asyncio.ensure_future(self._start())
        self.starting.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[Child]) -> None:
        if task is self.starting:
            self.starting = None
        if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), FitsStopping):
            log.warning("starting a fitting process failed: %s", task.exception())

    def kill(self) -> None:
        if self.refill is not None:
            self.refill.cancel()
            self.refill = None
        if self.child is not None:
            self.child.kill()


class FitSession:
    """A job's borrowed child and its folder of arrays (removed when the job ends)."""

    def __init__(self, slot: _Slot, folder: Path) -> None:
        self._slot = slot
        self.folder = folder
        self._known: dict[int, tuple[np.ndarray, str]] = {}
        self._calls = 0

    def allocate(self, rows: int, width: int, dtype: Any = np.float32) -> np.ndarray:
        """A zeroed rows x width array backed by a file of this session: fill it, and the
        child reads the same pages (calls pass it by reference, not by copy)."""
        path = self.folder / f"kept-{uuid.uuid4().hex[:12]}.npy"
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(rows, width))
        self._known[id(array)] = (array, str(path))
        return array

    async def call(self, fn: Callable[..., Any], *args: Any, on_stage: ProgressCallback | None = None) -> Any:
        """`fn(*args)` in the child (`fn` must be importable by name, e.g. a function of
        services.projection.maps; with `on_stage`, it is also passed as `on_stage=` and its
        calls come back here). Cancelling this coroutine kills the child."""
        self._calls += 1
        call_file = self.folder / f"call-{self._calls}.pkl"
        await asyncio.to_thread(_dump, call_file, (fn, args, on_stage is not None), self._known)
        child = await self._slot.get_child()
        try:
            reply = await child.request(call_file, on_stage)
        except asyncio.CancelledError:
            child.kill()
            raise
        except FitDied:
            if self._slot.pool.closing:
                raise FitsStopping() from None
            raise
        return await asyncio.to_thread(_load, Path(reply["result"]), None)

    def kill(self) -> None:
        """Stop the child's work now (it is replaced later)."""
        if self._slot.child is not None:
            self._slot.child.kill()

    @property
    def pid(self) -> int | None:
        child = self._slot.child
        return child.pid if child is not None and child.alive else None


class Fits:
    """The children of one service process, one per job worker slot.

    `root` holds one folder per service process (locked while the process lives; folders
    of dead processes are removed at start) with one folder per job inside."""

    def __init__(self, slots: int, root: Path, warm: bool, replace_after: float = REPLACE_AFTER_SECONDS) -> None:
        self.warm = warm
        self.replace_after = replace_after
        self.closing = False
        self._root = root
        self._slots = [_Slot(self, i) for i in range(max(1, slots))]
        self._free: asyncio.Queue[_Slot] | None = None
        self._folder: Path | None = None
        self._lock: IO[bytes] | None = None

    def _queue(self) -> asyncio.Queue[_Slot]:
        if self._free is None:
            self._free = asyncio.Queue()
            for slot in self._slots:
                self._free.put_nowait(slot)
        return self._free

    def _own_folder(self) -> Path:
        if self._folder is None:
            self._root.mkdir(parents=True, exist_ok=True)
            with open(self._root / ".sweep.lock", "ab") as sweeping:
                fcntl.flock(sweeping, fcntl.LOCK_EX)  # no sweep sees a folder before its lock is held
                sweep(self._root)
                folder = self._root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
                folder.mkdir()
                lock = open(folder / ".lock", "wb")  # noqa: SIM115 - held for the life of the process
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._folder, self._lock = folder, lock
        return self._folder

    async def run(self, stop: asyncio.Event) -> None:
        """Background task: start every slot's child now (warming up in the background),
        and kill them all when `stop` is set."""
        try:
            await asyncio.to_thread(self._own_folder)
            for slot in self._slots:
                if slot.child is None and slot.starting is None and not slot.busy:
                    try:
                        await slot.get_child()
                    except Exception as exc:  # the first job tries again
                        log.warning("starting a fitting process failed: %s", exc)
            await stop.wait()
        finally:
            await self.close()

    @asynccontextmanager
    async def session(self, job: str) -> AsyncIterator[FitSession]:
        """Borrow a slot's child for one job, with a folder for its arrays."""
        if self.closing:
            raise FitsStopping()
        slot = await self._queue().get()
        slot.busy = True
        folder = await asyncio.to_thread(self._job_folder, job)
        try:
            yield FitSession(slot, folder)
        finally:
            slot.busy = False
            self._queue().put_nowait(slot)
            await asyncio.to_thread(shutil.rmtree, folder, True)

    def _job_folder(self, job: str) -> Path:
        folder = self._own_folder() / f"{job}-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        return folder

    def pids(self) -> list[int]:
        return [s.child.pid for s in self._slots if s.child is not None and s.child.alive]

    async def close(self) -> None:
        """Kill every child (SIGTERM, SIGKILL after a short grace) and wait for them."""
        self.closing = True
        children = [s.child for s in self._slots if s.child is not None]
        starting = [s.starting for s in self._slots if s.starting is not None]
        for slot in self._slots:
            slot.kill()
        for task in starting:
            with contextlib.suppress(BaseException):
                child = await task
                child.kill()
                children.append(child)
        await asyncio.gather(*(c.wait() for c in children))
        if self._folder is not None:
            await asyncio.to_thread(shutil.rmtree, self._folder, True)
            self._folder = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def sweep(root: Path) -> None:
    """Remove the folders of service processes that are gone (their lock is free). The
    caller holds the root's sweep lock."""
    for folder in root.iterdir():
        lock_path = folder / ".lock"
        if not folder.is_dir():
            continue
        try:
            with open(lock_path, "ab") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: its process is alive
        shutil.rmtree(folder, ignore_errors=True)


# --- the child's side ----------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """The kernel kills this process when its parent dies (Linux); elsewhere a watchdog
    thread notices and exits."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl failed")
    except (OSError, AttributeError):

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _child_main() -> None:
    parent = int(os.environ.get(_PARENT_ENV, "0") or 0)
    if parent:
        _die_with_parent(parent)
    # The protocol gets its own copy of stdout; whatever a library prints goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        with lock:
            protocol.write(json.dumps(message) + "\n")

    from services.projection import maps

    maps.ensure_numba_cache()
    warming: threading.Thread | None = None

    def warm() -> None:
        began = time.monotonic()
        try:
            maps.warm_umap()
        except Exception as exc:  # a slow first job is the worst that can come of it
            send({"warm_failed": f"{type(exc).__name__}: {exc}"[:2000]})
        else:
            send({"warmed": time.monotonic() - began})

    def report(stage: str, done: int, total: int) -> None:
        send({"progress": [stage, int(done), int(total)]})

    for line in sys.stdin:
        request = json.loads(line)
        if request.get("warm") and warming is None:
            warming = threading.Thread(target=warm, name="warm-umap", daemon=True)
            warming.start()
        if "call" not in request:
            continue
        call_file = Path(request["call"])
        try:
            fn, args, with_progress = _load(call_file, "c")  # copy-on-write: the files stay as they are
            value = fn(*args, on_stage=report) if with_progress else fn(*args)
            result_file = call_file.with_name(call_file.stem + "-result.pkl")
            _dump(result_file, value)
            send({"result": str(result_file)})
        except Exception as exc:
            send({"error": (str(exc) or type(exc).__name__)[:2000], "type": type(exc).__name__})
    # stdin closed: the parent is gone or done with this child


if __name__ == "__main__":
    _child_main()
