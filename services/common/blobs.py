"""The blob store on pyarrow.fs: a local folder by default, or a bucket of any S3-compatible
store (AWS S3, MinIO, SeaweedFS, ...) when the root is s3://bucket/prefix. Large arrays live
here, never in SQL rows.

Objects are written whole and never appended, since S3 cannot append: an upload sends each
chunk as an object of its own, and the chunks become one object when it finishes
(services/ingest/datasets.py). On S3 a folder is a key prefix, a move is a copy and a
delete, and `local_path` is None: what is memory-mapped is mapped from a temporary copy
(`open_mapped`)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import datetime

import pyarrow as pa
import pyarrow.fs as pafs

from services.common.config import S3Access

log = logging.getLogger(__name__)

COPY_BLOCK = 8 << 20


class BlobStoreUnreachable(RuntimeError):
    """The S3 store or its bucket cannot be reached when a service starts."""


class BlobStore:
    def __init__(self, root: str, s3: S3Access | None = None) -> None:
        self.root = root
        self.where = root  # for the start's log line
        self.fs: pafs.FileSystem
        if root.startswith("s3://"):
            self.fs, self.base, where = _open_s3(root, s3 or S3Access())
            self.where = f"{root} at {where}"
        elif "://" in root:
            self.fs, self.base = pafs.FileSystem.from_uri(root)
        else:
            self.fs, self.base = pafs.LocalFileSystem(), root.rstrip("/")
            self.fs.create_dir(self.base, recursive=True)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, key: str) -> str:
        return f"{self.base}/{key.lstrip('/')}"

    def _parent(self, key: str) -> None:
        if self.local:  # on S3 a folder is only a prefix: nothing to make
            parent = self.path(key).rsplit("/", 1)[0]
            self.fs.create_dir(parent, recursive=True)

    def open_output(self, key: str) -> pa.NativeFile:
        """A new object, or one replaced whole; on S3 it appears when the stream closes."""
        self._parent(key)
        return self.fs.open_output_stream(self.path(key))

    def put(self, key: str, data: bytes) -> None:
        with self.open_output(key) as sink:
            sink.write(data)

    def open_input_file(self, key: str) -> pa.NativeFile:
        return self.fs.open_input_file(self.path(key))

    def open_input_stream(self, key: str) -> pa.NativeFile:
        return self.fs.open_input_stream(self.path(key))

    def exists(self, key: str) -> bool:
        return self.fs.get_file_info(self.path(key)).type != pafs.FileType.NotFound

    def is_folder(self, key: str) -> bool:
        return self.fs.get_file_info(self.path(key)).type == pafs.FileType.Directory

    def size(self, key: str) -> int:
        info = self.fs.get_file_info(self.path(key))
        return 0 if info.type == pafs.FileType.NotFound else int(info.size or 0)

    def delete(self, key: str) -> None:
        if self.exists(key):
            self.fs.delete_file(self.path(key))

    def delete_dir(self, prefix: str) -> None:
        path = self.path(prefix)
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            self.fs.delete_dir(path)

    def files(self, prefix: str) -> list[tuple[str, int]]:
        """(name, size) of every object under `prefix`, at any depth, by name; names are
        relative to `prefix`."""
        base = self.path(prefix).rstrip("/")
        found = [
            (info.path[len(base):].lstrip("/"), int(info.size or 0))
            for info in self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
            if info.type == pafs.FileType.File
        ]
        return sorted(found)

    def children(self, prefix: str) -> dict[str, datetime | None]:
        """What lies directly under `prefix` (a file, or a folder of files) by name, with the
        newest change time of anything in it (None where the store tells none); for the
        reconciler, which removes what has no row once it is old enough."""
        base = self.path(prefix).rstrip("/")
        found: dict[str, datetime | None] = {}
        for info in self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
            name = info.path[len(base):].lstrip("/").split("/", 1)[0]
            if not name:
                continue
            mtime: datetime | None = info.mtime
            have = found.get(name)
            if name not in found or (mtime is not None and (have is None or mtime > have)):
                found[name] = mtime
        return found

    def move(self, src: str, dst: str) -> None:
        """Move a file or a folder onto `dst`, replacing a file there. Local: a rename. S3 has
        no rename: each object is copied, then the source deleted (a crash in between leaves
        both, and moving again finishes the job)."""
        if self.local:
            self._parent(dst)
            self.fs.move(self.path(src), self.path(dst))
            return
        source = self.path(src)
        if self.fs.get_file_info(source).type == pafs.FileType.Directory:
            for name, _ in self.files(src):
                self.fs.copy_file(f"{source}/{name}", f"{self.path(dst)}/{name}")
            self.fs.delete_dir(source)
        else:
            self.fs.copy_file(source, self.path(dst))
            self.fs.delete_file(source)

    def local_path(self, key: str) -> str | None:
        """A filesystem path for memory mapping, when the store is local."""
        return self.path(key) if self.local else None

    def open_mapped(self, key: str) -> pa.MemoryMappedFile:
        """The object memory-mapped for reading: in place when the store is local; from S3 a
        copy in a temporary file that has no name once mapped (in TMPDIR), so that reading a
        large file holds no more memory than it does locally."""
        path = self.local_path(key)
        if path is not None:
            return pa.memory_map(path, "r")
        with self.open_input_stream(key) as source, tempfile.NamedTemporaryFile(prefix="embedviz-blob-") as copy:
            shutil.copyfileobj(source, copy, COPY_BLOCK)
            copy.flush()
            return pa.memory_map(copy.name, "r")  # the map keeps the bytes after the name goes


def _open_s3(root: str, s3: S3Access) -> tuple[pafs.S3FileSystem, str, str]:
    """The S3 filesystem of `root` (s3://bucket/prefix), its base path and where it is,
    with the bucket made when it is missing."""
    base = root.removeprefix("s3://").strip("/")
    bucket = base.split("/", 1)[0]
    region = s3.region or None
    if region is None and s3.endpoint:
        region = "us-east-1"  # what S3-compatible stores expect; spares the SDK's look-ups
    elif region is None:
        try:  # AWS itself: the bucket's own region
            region = pafs.resolve_s3_region(bucket)
        except OSError:
            region = None  # a bucket still to be made: the SDK's default
    fs = pafs.S3FileSystem(
        access_key=s3.access_key or None,
        secret_key=s3.secret_key or None,
        region=region,
        scheme="http" if s3.scheme == "http" else "https",
        endpoint_override=s3.endpoint or None,
        allow_bucket_creation=True,
    )
    where = f"{s3.scheme}://{s3.endpoint}" if s3.endpoint else f"AWS {region or ''}".strip()
    try:
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            fs.create_dir(bucket)
            log.info("made the bucket %s at %s", bucket, where)
    except OSError as exc:
        raise BlobStoreUnreachable(
            f"the blob store {root} at {where} cannot be used: {exc}; check EMBEDVIZ_S3_ENDPOINT, "
            "the credentials (EMBEDVIZ_S3_ACCESS_KEY, EMBEDVIZ_S3_SECRET_KEY) and that the store is up"
        ) from exc
    return fs, base, where
