"""The blob store on pyarrow.fs: a local folder by default, S3 (or any pyarrow
filesystem URI) in production. Large arrays live here, never in SQL rows."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.fs as pafs


class BlobStore:
    def __init__(self, root: str) -> None:
        if "://" in root:
            self.fs, self.base = pafs.FileSystem.from_uri(root)
        else:
            self.fs, self.base = pafs.LocalFileSystem(), root.rstrip("/")
            self.fs.create_dir(self.base, recursive=True)

    def path(self, key: str) -> str:
        return f"{self.base}/{key.lstrip('/')}"

    def _parent(self, key: str) -> None:
        parent = self.path(key).rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)

    def open_output(self, key: str) -> pa.NativeFile:
        self._parent(key)
        return self.fs.open_output_stream(self.path(key))

    def open_append(self, key: str) -> pa.NativeFile:
        self._parent(key)
        stream: pa.NativeFile = self.fs.open_append_stream(self.path(key))  # pyarrow-stubs leave it unannotated
        return stream

    def open_input_file(self, key: str) -> pa.NativeFile:
        return self.fs.open_input_file(self.path(key))

    def open_input_stream(self, key: str) -> pa.NativeFile:
        return self.fs.open_input_stream(self.path(key))

    def exists(self, key: str) -> bool:
        return self.fs.get_file_info(self.path(key)).type != pafs.FileType.NotFound

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
        self._parent(dst)
        self.fs.move(self.path(src), self.path(dst))

    def local_path(self, key: str) -> str | None:
        """A filesystem path for memory mapping, when the store is local."""
        return self.path(key) if isinstance(self.fs, pafs.LocalFileSystem) else None
