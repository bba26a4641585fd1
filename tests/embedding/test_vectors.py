"""The vector file: written batch by batch, read back memory-mapped, streamed in chunks."""

from pathlib import Path

import numpy as np
import pyarrow as pa

from services.common.blobs import BlobStore
from services.embedding.vectors import VECTOR_COLUMN, VectorFile, VectorFileWriter, vectors_key


def test_vector_file_round_trip_in_chunks(tmp_path: Path) -> None:
    blobs = BlobStore(str(tmp_path))
    rng = np.random.default_rng(7)
    batches = [rng.standard_normal((n, 8)).astype(np.float32) for n in (5, 3, 0, 9)]
    key = vectors_key("e1")
    writer = VectorFileWriter(blobs.open_output(key), 8)
    for batch in batches:
        writer.write(batch)
    writer.close()
    expected = np.concatenate(batches)

    with pa.memory_map(blobs.local_path(key)) as source:
        table = pa.ipc.open_file(source).read_all()
    assert table.schema.field(VECTOR_COLUMN).type == pa.list_(pa.float32(), 8)
    assert table.num_rows == 17

    with VectorFile.open(blobs, key) as vectors:
        assert (vectors.rows, vectors.dimension) == (17, 8)
        np.testing.assert_array_equal(vectors.rows_as_numpy(), expected)
        chunks = list(vectors.chunks(4))
    assert [(c.start_row, c.row_count) for c in chunks] == [(0, 4), (4, 4), (8, 4), (12, 4), (16, 1)]
    streamed = np.frombuffer(b"".join(c.data for c in chunks), dtype="<f4").reshape(-1, 8)
    np.testing.assert_array_equal(streamed, expected)


def test_empty_vector_file_has_no_chunks(tmp_path: Path) -> None:
    blobs = BlobStore(str(tmp_path))
    writer = VectorFileWriter(blobs.open_output("v.arrow"), 4)
    writer.close()
    with VectorFile.open(blobs, "v.arrow") as vectors:
        assert vectors.rows == 0
        assert list(vectors.chunks(10)) == []
