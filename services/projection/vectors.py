"""Unit vectors for search and neighbours, memory-mapped from local files.

An embedding's vectors (its first `rows` rows) are fetched once, normalised and written
to `<folder>/<hash of the embedding's name>-<rows>.npy`, then read with
`np.load(mmap_mode="r")`: the process holds no copy, the pages live in the operating
system's page cache (shared by every process on the machine that reads the same file, and
dropped under memory pressure). Disk use is bounded: past `budget_bytes`, the files used
least recently are removed (a process that still has one mapped keeps reading it until it
lets go). Files are written under a temporary name and renamed, so several processes can
share the folder. Plain Python, no gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 8 << 30
OPEN_FILES = 8  # memory maps a process keeps open
NORMALISE_ROWS = 65_536  # rows normalised at a time while a file is written
TOUCH_SECONDS = 60.0  # how often a file in use has its time of last use refreshed
STALE_PART_SECONDS = 3600.0  # a partial file untouched this long belongs to a process that died

Allocate = Callable[[int, int], np.ndarray]  # (rows, width) -> an array to fill
Load = Callable[[Allocate], Awaitable[np.ndarray]]  # fills one array from `Allocate`, returns it


def file_stem(embedding: str) -> str:
    return hashlib.sha256(embedding.encode()).hexdigest()[:32]


class VectorFiles:
    def __init__(self, folder: Path, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self._folder = folder
        self._budget = max(0, budget_bytes)
        self._open: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._touched: dict[Path, float] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    def path(self, embedding: str, rows: int) -> Path:
        return self._folder / f"{file_stem(embedding)}-{rows}.npy"

    async def get(self, embedding: str, rows: int, load: Load) -> np.ndarray:
        """The unit vectors of `embedding`'s first `rows` rows (float32, read-only memory
        map); `load` fetches them when no file has them yet."""
        key = (embedding, rows)
        vectors = self._open.get(key)
        if vectors is not None:
            self._open.move_to_end(key)
            self._touch(self.path(embedding, rows))
            return vectors
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            vectors = self._open.get(key)
            if vectors is None:
                path = self.path(embedding, rows)
                vectors = await asyncio.to_thread(self._open_file, path)
                if vectors is None:
                    await self._write(path, load)
                    vectors = await asyncio.to_thread(self._open_file, path)
                    if vectors is None:
                        raise RuntimeError(f"the vector file {path} vanished as it was written")
                self._open[key] = vectors
                while len(self._open) > OPEN_FILES:
                    self._open.popitem(last=False)
        self._locks.pop(key, None)
        return vectors

    def _open_file(self, path: Path) -> np.ndarray | None:
        try:
            vectors: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError):
            return None  # not there (or half removed): written again
        self._touch(path, force=True)
        return vectors

    def _touch(self, path: Path, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._touched.get(path, 0.0) < TOUCH_SECONDS:
            return
        self._touched[path] = now
        with contextlib.suppress(OSError):
            os.utime(path)

    async def _write(self, path: Path, load: Load) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}.part.npy")
        opened: list[np.memmap[Any, Any]] = []

        def allocate(rows: int, width: int) -> np.ndarray:
            array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(rows, width))
            opened.append(array)
            return array

        try:
            filled = await load(allocate)
            if not opened or filled is not opened[-1]:
                raise RuntimeError("the vectors were not loaded into the file given")
            await asyncio.to_thread(self._finish, opened[-1], partial, path)  # the same array, as a memmap
        finally:
            opened.clear()
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    def _finish(self, array: np.memmap[Any, Any], partial: Path, path: Path) -> None:
        for start in range(0, array.shape[0], NORMALISE_ROWS):
            block = array[start : start + NORMALISE_ROWS]
            norms = np.linalg.norm(block, axis=1, keepdims=True)
            block /= np.maximum(norms, 1e-12)
        array.flush()
        del array
        os.replace(partial, path)
        self._evict(keep=path)

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used files until the folder is within its budget."""
        files = []
        for entry in self._folder.glob("*.npy"):
            if entry.name.startswith("."):  # a file being written, or left by a process that died writing it
                with contextlib.suppress(OSError):
                    if time.time() - entry.stat().st_mtime > STALE_PART_SECONDS:
                        entry.unlink()
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                files.append((stat.st_mtime, stat.st_size, entry))
        total = sum(size for _, size, _ in files)
        for _, size, entry in sorted(files, key=lambda f: f[0]):
            if total <= self._budget:
                break
            if entry == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                log.info("removed %s to keep the vector files within %d bytes", entry.name, self._budget)
            total -= size

    def forget(self, embedding: str) -> None:
        """Remove the files of an embedding that is gone."""
        stem = file_stem(embedding)
        for key in [k for k in self._open if k[0] == embedding]:
            del self._open[key]
        for entry in self._folder.glob(f"{stem}-*.npy"):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
