"""The blob store behaves the same in a local folder and on S3 (SeaweedFS, a real server):
objects written whole, read back, moved, listed for the reconciler and deleted, folders
included; only a local store offers paths to memory-map."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.common.blobs import BlobStore, BlobStoreUnreachable
from services.common.config import S3Access
from services.common.reconcile import remove_unowned, stale_entries
from tests.support.s3 import SeaweedFS, seaweedfs  # noqa: F401  (a fixture)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield BlobStore(str(tmp_path / "blobs"))
    else:
        server: SeaweedFS = request.getfixturevalue("seaweedfs")
        yield BlobStore(server.root(f"suite/{uuid.uuid4().hex[:8]}"), server.access)


def test_an_object_reads_back_as_written_and_is_replaced_whole(store: BlobStore) -> None:
    store.put("datasets/d1/notes.bin", b"first version, long")
    assert store.exists("datasets/d1/notes.bin") and store.size("datasets/d1/notes.bin") == 19
    with store.open_output("datasets/d1/notes.bin") as sink:
        sink.write(b"second")
    with store.open_input_stream("datasets/d1/notes.bin") as source:
        assert source.read() == b"second"
    assert not store.exists("datasets/d1/missing") and store.size("datasets/d1/missing") == 0


def test_a_parquet_file_round_trips(store: BlobStore) -> None:
    table = pa.table({"__row": pa.array(range(50), pa.int64()), "text": [f"row {i}" for i in range(50)]})
    with store.open_output("datasets/d2/rows.parquet") as sink:
        pq.write_table(table, sink)
    with store.open_input_file("datasets/d2/rows.parquet") as source:
        assert pq.read_table(source).equals(table)


def test_nothing_appends(store: BlobStore) -> None:
    assert not hasattr(store, "open_append")


def test_a_move_replaces_the_target_and_removes_the_source(store: BlobStore) -> None:
    store.put("datasets/d3/rows.next.parquet", b"new rows")
    store.put("datasets/d3/rows.parquet", b"old rows")
    store.move("datasets/d3/rows.next.parquet", "datasets/d3/rows.parquet")
    assert not store.exists("datasets/d3/rows.next.parquet")
    with store.open_input_stream("datasets/d3/rows.parquet") as source:
        assert source.read() == b"new rows"


def test_a_folder_moves_with_everything_in_it(store: BlobStore) -> None:
    store.put("stages/a/one", b"1")
    store.put("stages/a/deeper/two", b"22")
    store.move("stages/a", "stages/b")
    assert store.files("stages/b") == [("deeper/two", 2), ("one", 1)]
    assert store.files("stages/a") == []


def test_deletes_take_files_and_folders_and_ignore_what_is_missing(store: BlobStore) -> None:
    store.put("embeddings/e1/vectors.arrow", b"v")
    store.put("embeddings/e1/parts/0/0-10.arrow", b"p")
    store.put("embeddings/e2/vectors.arrow", b"w")
    store.delete("embeddings/e1/vectors.arrow")
    store.delete("embeddings/e1/never-was")
    assert not store.exists("embeddings/e1/vectors.arrow")
    store.delete_dir("embeddings/e1")
    store.delete_dir("embeddings/never-was")
    assert store.files("embeddings") == [("e2/vectors.arrow", 1)]


def test_children_name_files_and_folders_with_their_newest_change(store: BlobStore) -> None:
    store.put("uploads/u1.part", b"abc")
    store.put("uploads/u2.chunks/0000000000000000-0000000000000002", b"ab")
    store.put("uploads/u2.chunks/0000000000000002-0000000000000004", b"cd")
    found = store.children("uploads")
    assert set(found) == {"u1.part", "u2.chunks"}
    assert all(when is not None for when in found.values())
    assert store.children("nothing-here") == {}
    assert store.is_folder("uploads/u2.chunks") and not store.is_folder("uploads/u1.part")


def test_the_reconciler_removes_unowned_files_and_folders(store: BlobStore) -> None:
    store.put("uploads/gone.part", b"x")
    store.put("uploads/kept.part", b"y")
    store.put("uploads/gone.chunks/0000000000000000-0000000000000001", b"x")
    parts = stale_entries(store, "uploads", 0.0, ".part")
    chunks = stale_entries(store, "uploads", 0.0, ".chunks")
    assert parts == {"gone": "uploads/gone.part", "kept": "uploads/kept.part"}
    assert chunks == {"gone": "uploads/gone.chunks"}
    assert remove_unowned(store, parts, {"kept"}) == ["uploads/gone.part"]
    assert remove_unowned(store, chunks, {"kept"}) == ["uploads/gone.chunks"]
    assert store.files("uploads") == [("kept.part", 1)]


def test_only_a_local_store_gives_paths_to_memory_map(store: BlobStore) -> None:
    store.put("projections/p1/points.arrow", b"pts")
    path = store.local_path("projections/p1/points.arrow")
    if store.local:
        assert path is not None and Path(path).read_bytes() == b"pts"
    else:
        assert path is None


def test_an_arrow_file_is_memory_mapped_from_either_store(store: BlobStore) -> None:
    table = pa.table({"vector": pa.array([[float(i), 1.0] for i in range(100)], pa.list_(pa.float32(), 2))})
    with store.open_output("embeddings/e3/vectors.arrow") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=30)
    with store.open_mapped("embeddings/e3/vectors.arrow") as mapped:
        assert isinstance(mapped, pa.MemoryMappedFile)
        assert pa.ipc.open_file(mapped).read_all().equals(table)
    with pytest.raises(FileNotFoundError):
        store.open_mapped("embeddings/never-was/vectors.arrow")


def test_a_missing_bucket_is_made(seaweedfs: SeaweedFS) -> None:  # noqa: F811
    bucket = f"made-{uuid.uuid4().hex[:8]}"
    store = BlobStore(seaweedfs.root("blobs", bucket), seaweedfs.access)
    store.put("datasets/d/rows.parquet", b"r")
    listed = seaweedfs.filesystem().get_file_info(f"{bucket}/blobs/datasets/d/rows.parquet")
    assert listed.size == 1


def test_a_store_that_cannot_be_reached_says_what_to_check(seaweedfs: SeaweedFS) -> None:  # noqa: F811
    wrong_keys = S3Access(endpoint=seaweedfs.endpoint, scheme="http", access_key="nobody", secret_key="wrong")
    with pytest.raises(BlobStoreUnreachable, match="EMBEDVIZ_S3_ENDPOINT"):
        BlobStore(seaweedfs.root("blobs", f"other-{uuid.uuid4().hex[:8]}"), wrong_keys)
