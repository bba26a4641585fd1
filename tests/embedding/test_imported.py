"""Vectors a table brings (services/embedding/imported.py): which columns can hold them,
their dimension, and every row without a usable vector named by its number."""

from __future__ import annotations

import decimal

import numpy as np
import pyarrow as pa
import pytest

from services.common.errors import InvalidArgument
from services.embedding.imported import check_columns, usual_length, vectors_of

LISTS = pa.table(
    {
        "vec": pa.array(
            [[1.0, 2, 3], [4, 5, 6], None, [1, 2], [1, None, 3], [float("nan"), 1, 2]], pa.list_(pa.float32())
        ),
        "title": ["a", "b", "c", "d", "e", "f"],
    }
)


def types(table: pa.Table) -> dict[str, pa.DataType]:
    return {f.name: f.type for f in table.schema}


def refusal(table: pa.Table, columns: list[str], dimension: int, first_row: int = 0) -> str:
    with pytest.raises(InvalidArgument) as refused:
        vectors_of(table, columns, dimension, first_row)
    return refused.value.message


def test_a_list_column_gives_the_rows_vectors_exactly() -> None:
    got = vectors_of(LISTS.slice(0, 2), ["vec"], 3, 0)
    assert got.dtype == np.float32 and got.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert check_columns(["vec"], types(LISTS)) is None  # the rows tell the length
    assert usual_length(LISTS, "vec") == 3


def test_each_kind_of_bad_row_is_named_by_its_number_counted_from_1() -> None:
    message = refusal(LISTS.slice(0, 5), ["vec"], 3)
    assert message.startswith("2 rows have no usable vector of 3 numbers")
    assert "row 3: no vector; row 4: 2 numbers" in message
    assert "row 11: an empty value in the list" in refusal(LISTS.slice(4, 1), ["vec"], 3, first_row=10)
    assert "row 6: a value that is not a finite number" in refusal(LISTS.slice(5, 1), ["vec"], 3, first_row=5)


def test_many_bad_rows_are_counted_and_the_first_ten_listed() -> None:
    table = pa.table({"vec": pa.array([[1.0]] * 25, pa.list_(pa.float64()))})
    message = refusal(table, ["vec"], 2)
    assert message.startswith("25 rows have") and "row 10: 1 numbers; and 15 more" in message
    assert "row 11:" not in message


def test_numeric_columns_one_number_each() -> None:
    table = pa.table({"a": [1, 2, None], "b": [0.5, None, None], "d": pa.array([decimal.Decimal("1.5")] * 3)})
    assert check_columns(["a", "b"], types(table)) == 2
    assert vectors_of(table.slice(0, 1), ["a", "b", "d"], 3, 0).tolist() == [[1.0, 0.5, 1.5]]
    message = refusal(table, ["a", "b"], 2, first_row=100)
    assert "row 102: no value in b; row 103: no value in a, b" in message


@pytest.mark.parametrize(
    ("columns", "words"),
    [
        (["title"], "column 'title' holds string, not numbers"),
        (["vec", "title"], "column 'vec' holds list<item: float>, not numbers; a column of lists can only be"),
        (["n"], "vectors of 1 numbers cannot be mapped"),
        (["words"], "column 'words' holds lists of string, not of numbers"),
        (["n", "n"], "names a column twice"),
        ([], "name the column(s) that hold the vectors"),
    ],
)
def test_columns_that_cannot_hold_vectors_are_refused_by_name(columns: list[str], words: str) -> None:
    kinds = {**types(LISTS), "n": pa.int64(), "words": pa.list_(pa.string())}
    with pytest.raises(InvalidArgument) as refused:
        check_columns(columns, kinds)
    assert words in refused.value.message


def test_a_fixed_size_list_says_its_dimension() -> None:
    table = pa.table({"v": pa.array([[1, 2], [3, 4]], pa.list_(pa.int64(), 2))})
    assert check_columns(["v"], types(table)) == 2
    assert vectors_of(table, ["v"], 2, 0).tolist() == [[1, 2], [3, 4]]
