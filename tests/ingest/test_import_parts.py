"""The importer's part files alone: an import stopped after some committed parts and run
again from its checkpoint writes every row once, with the statistics of an import that was
never stopped; a column found to hold text late starts the parts over under a new name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from services.ingest.importer import Checkpoint, ImportResult, assemble, import_file


class Killed(Exception):
    pass


class FolderParts:
    """Parts in a folder; `die_after` commits raise Killed, as a SIGKILL would end the job."""

    def __init__(self, root: Path, part_rows: int, die_after: int = 0) -> None:
        self.root = root
        self.part_rows = part_rows
        self.die_after = die_after
        self.saved: Checkpoint | None = None
        self.commits = 0

    def _path(self, tag: str, index: int) -> Path:
        return self.root / f"{tag}-{index:05d}.parquet"

    def open(self, tag: str, index: int) -> Any:
        return open(str(self._path(tag, index)) + ".next", "wb")  # noqa: SIM115 - the importer closes it

    def commit(self, tag: str, index: int, checkpoint: Checkpoint) -> None:
        os.replace(str(self._path(tag, index)) + ".next", self._path(tag, index))
        self.saved = checkpoint
        self.commits += 1
        if self.die_after and self.commits >= self.die_after:
            raise Killed()

    def read(self, tag: str, index: int) -> pq.ParquetFile:
        return pq.ParquetFile(self._path(tag, index))


def run(source: Path, parts: FolderParts, resume: Checkpoint | None = None) -> ImportResult:
    return import_file(
        lambda: open(source, "rb"), lambda: open(os.devnull, "wb"), source.name, source.stat().st_size,
        parts=parts, resume=resume,
    )


def joined(parts: FolderParts, result: ImportResult, tmp_path: Path) -> Any:
    assert result.parts is not None
    out = tmp_path / "joined.parquet"
    assemble(parts, result.parts, lambda: open(out, "wb"))
    return pq.read_table(out)


@pytest.mark.parametrize("die_after", [1, 2, 3])
def test_a_resumed_import_writes_each_row_once_with_the_same_statistics(tmp_path: Path, die_after: int) -> None:
    rows = 300_000
    source = tmp_path / "table.csv"
    source.write_text("id,text,n\n" + "".join(f"{i},row {i} of many,{i % 7}\n" for i in range(rows)))
    (tmp_path / "whole").mkdir()
    whole = run(source, FolderParts(tmp_path / "whole", 50_000))

    (tmp_path / "parts").mkdir()
    parts = FolderParts(tmp_path / "parts", 50_000, die_after=die_after)
    with pytest.raises(Killed):
        run(source, parts)
    stopped_at = parts.saved
    assert stopped_at is not None and 0 < stopped_at.rows < rows
    parts.die_after, parts.commits = 0, 0
    result = run(source, parts, resume=stopped_at)
    assert result.row_count == rows
    assert result.columns == whole.columns
    assert result.parts is not None and result.parts.parts > stopped_at.parts
    table = joined(parts, result, tmp_path)
    assert table.column("__row").to_pylist() == list(range(rows))
    assert table.column("id").to_pylist() == list(range(rows))


def test_a_column_that_turns_to_text_late_starts_the_parts_over(tmp_path: Path) -> None:
    rows = 200_000
    source = tmp_path / "late.csv"
    values = [str(i) for i in range(rows - 1)] + ["not a number"]
    source.write_text("id,code\n" + "".join(f"{i},{v}\n" for i, v in enumerate(values)))
    parts = FolderParts(tmp_path, 40_000)
    result = run(source, parts)
    assert result.parts is not None and result.parts.as_text == ("code",)
    table = joined(parts, result, tmp_path)
    assert table.num_rows == rows
    assert table.column("code").to_pylist() == values
    assert table.column("__row").to_pylist() == list(range(rows))
