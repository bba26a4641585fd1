"""Vectors a dataset already holds ("bring your own vectors"): one column whose values are
lists of numbers (a Parquet or Arrow list<float>, a JSON array in JSON Lines), or several
numeric columns, one number of each row's vector in each. Such an embedding has no model:
the worker reads the vectors instead of running one, and checks every row's length."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from services.common.errors import InvalidArgument, excerpt

# The model name an imported embedding carries (no model made its vectors).
IMPORTED = "imported"
MIN_DIMENSION = 2
MAX_DIMENSION = 8192
# Rows a failed check lists by number; the message gives how many more there are.
LISTED_ROWS = 10


def _numeric(type_: pa.DataType) -> bool:
    return bool(pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_))


def _is_list(type_: pa.DataType) -> bool:
    return bool(pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_))


def check_names(columns: Sequence[str]) -> None:
    if not columns:
        raise InvalidArgument("name the column(s) that hold the vectors in vector_columns")
    if len(set(columns)) != len(columns):
        raise InvalidArgument("vector_columns names a column twice")


def check_columns(columns: Sequence[str], types: dict[str, pa.DataType]) -> int | None:
    """The dimension the columns give, when their types alone tell it (N numeric columns, a
    fixed-size list); None for one column of lists of any length (its rows tell it).
    InvalidArgument naming the column when a type cannot hold a vector."""
    check_names(columns)
    if len(columns) == 1 and _is_list(types[columns[0]]):
        type_: Any = types[columns[0]]  # a list type (pyarrow's stubs do not narrow it)
        if not _numeric(type_.value_type):
            raise InvalidArgument(
                f"column '{excerpt(columns[0])}' holds lists of {type_.value_type}, not of numbers",
                "NOT_A_VECTOR_COLUMN",
            )
        if pa.types.is_fixed_size_list(type_):
            return check_dimension(type_.list_size)
        return None
    for name in columns:
        if not _numeric(types[name]):
            hint = (
                "; a column of lists can only be the one vector column" if _is_list(types[name]) else
                "; name one column of lists (e.g. list<float>) or numeric columns, one number each"
            )
            raise InvalidArgument(
                f"column '{excerpt(name)}' holds {types[name]}, not numbers{hint}", "NOT_A_VECTOR_COLUMN"
            )
    return check_dimension(len(columns))


def check_dimension(dimension: int) -> int:
    if not MIN_DIMENSION <= dimension <= MAX_DIMENSION:
        raise InvalidArgument(
            f"vectors of {dimension} numbers cannot be mapped; use from {MIN_DIMENSION} to {MAX_DIMENSION}",
            "BAD_DIMENSION",
        )
    return dimension


def usual_length(table: pa.Table, column: str) -> int:
    """The most common length of the first rows' lists (the vectors' dimension)."""
    lengths = pc.list_value_length(table.column(column)).to_pylist()
    counted = Counter(n for n in lengths if n)
    if not counted:
        raise InvalidArgument(
            f"column '{excerpt(column)}' has no vector in its first {len(lengths)} rows", "NO_VECTORS"
        )
    return check_dimension(counted.most_common(1)[0][0])


def _bad_rows(
    indexes: np.ndarray, why: Callable[[int], str], first_row: int, dimension: int
) -> InvalidArgument:
    """The error for rows without a usable vector (`indexes` into the table), the first
    LISTED_ROWS by number (rows counted from 1, as a person counts the file's lines)."""
    shown = "; ".join(f"row {first_row + int(i) + 1}: {why(int(i))}" for i in indexes[:LISTED_ROWS])
    more = f"; and {len(indexes) - LISTED_ROWS} more" if len(indexes) > LISTED_ROWS else ""
    rows = "a row has" if len(indexes) == 1 else f"{len(indexes)} rows have"
    return InvalidArgument(
        f"{rows} no usable vector of {dimension} numbers (rows counted from 1): "
        f"{shown}{more}. Fix them in the file and upload it again",
        "BAD_VECTORS",
    )


def vectors_of(table: pa.Table, columns: Sequence[str], dimension: int, first_row: int) -> np.ndarray:
    """The rows' vectors as float32 (rows × dimension). Every row must have one: a missing
    vector, one of another length, or a value that is not a finite number ends it with
    InvalidArgument listing those rows by number (first_row is the table's first row's
    index in the dataset)."""
    rows = table.num_rows
    if len(columns) == 1 and _is_list(table.schema.field(columns[0]).type):
        column = table.column(columns[0]).combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(column), -1).to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero(lengths != dimension)
        if len(wrong):
            raise _bad_rows(
                wrong, lambda i: "no vector" if lengths[i] < 0 else f"{lengths[i]} numbers", first_row, dimension
            )
        flat: Any = pc.list_flatten(column)
        if flat.null_count:  # an empty value inside a list
            parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
            holes = np.unique(parents[pc.is_null(flat).to_numpy(zero_copy_only=False)])
            raise _bad_rows(holes, lambda i: "an empty value in the list", first_row, dimension)
        matrix = pc.cast(flat, pa.float32()).to_numpy(zero_copy_only=False).reshape(rows, dimension)
    else:
        matrix = np.empty((rows, len(columns)), dtype=np.float32)
        missing = np.zeros((rows, len(columns)), dtype=bool)
        for j, name in enumerate(columns):
            values: Any = table.column(name)
            missing[:, j] = pc.is_null(values).to_numpy(zero_copy_only=False)
            filled: Any = pc.fill_null(values, pa.scalar(0, values.type))
            matrix[:, j] = pc.cast(filled, pa.float64()).to_numpy(zero_copy_only=False)
        holes = np.flatnonzero(missing.any(axis=1))
        if len(holes):
            def empty(i: int) -> str:
                return "no value in " + ", ".join(excerpt(columns[j]) for j in np.flatnonzero(missing[i])[:3])

            raise _bad_rows(holes, empty, first_row, dimension)
    unusable = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if len(unusable):
        raise _bad_rows(unusable, lambda i: "a value that is not a finite number", first_row, dimension)
    return np.ascontiguousarray(matrix, dtype=np.float32)
