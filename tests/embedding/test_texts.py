"""Turning rows into the texts the model embeds."""

import pyarrow as pa
import pytest

from services.common.errors import InvalidArgument
from services.embedding.texts import build_texts, columns_to_embed, template_columns

TABLE = pa.table(
    {
        "title": ["Cats", None, "Dogs"],
        "body": ["purr", "bark", None],
        "stars": pa.array([5, None, 3], type=pa.int64()),
    }
)


def test_template_fills_columns_and_nulls_become_empty() -> None:
    texts = build_texts(TABLE, ["title", "body"], "{title}: {body}")
    assert texts == ["Cats: purr", ": bark", "Dogs: "]


def test_template_keeps_escaped_braces_and_formats_numbers() -> None:
    texts = build_texts(TABLE, ["title", "stars"], "{{{title}}} has {stars} stars")
    assert texts == ["{Cats} has 5 stars", "{} has  stars", "{Dogs} has 3 stars"]


def test_without_template_columns_are_joined_by_new_lines() -> None:
    assert build_texts(TABLE, ["title", "body"]) == ["Cats\npurr", "\nbark", "Dogs\n"]
    assert build_texts(TABLE, ["body"]) == ["purr", "bark", ""]


def test_columns_come_from_the_template_when_none_are_named() -> None:
    assert columns_to_embed([], "{title}: {body} {title}") == ["title", "body"]
    assert template_columns("{{not}} {a} {b}") == ["a", "b"]


def test_template_column_outside_text_columns_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="the template uses body"):
        columns_to_embed(["title"], "{title}: {body}")


def test_nothing_to_embed_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="text_columns"):
        columns_to_embed([], "")
