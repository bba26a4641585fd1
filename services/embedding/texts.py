"""Turning a dataset's columns into the texts a model embeds."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from services.common.errors import InvalidArgument, excerpt

# "{{" and "}}" are literal braces; "{name}" is a column's value.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


def template_columns(template: str) -> list[str]:
    """Column names a template refers to, in order of first use."""
    names: list[str] = []
    for match in _PLACEHOLDER.finditer(template):
        name = match.group(1)
        if name is None:
            continue
        if not name.strip():
            raise InvalidArgument(
                f"template '{excerpt(template)}' has an empty placeholder {{}}; name a column, e.g. {{title}}"
            )
        if name not in names:
            names.append(name)
    return names


def columns_to_embed(text_columns: Sequence[str], template: str) -> list[str]:
    """The columns an embedding reads: text_columns, or the template's columns when none
    are named. Every placeholder of the template must be one of the columns."""
    columns = list(dict.fromkeys(text_columns))
    used = template_columns(template) if template else []
    if not columns:
        columns = used
    if not columns:
        raise InvalidArgument("name the column(s) to embed in text_columns, or a template such as '{title}: {body}'")
    missing = [name for name in used if name not in columns]
    if missing:
        raise InvalidArgument(
            f"the template uses {', '.join(excerpt(m) for m in missing)}, which are not among text_columns "
            f"({', '.join(excerpt(c) for c in columns)})"
        )
    return columns


def _as_strings(column: pa.Array[Any] | pa.ChunkedArray[Any]) -> list[str]:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return [value if value is not None else "" for value in column.to_pylist()]
    return ["" if value is None else str(value) for value in column.to_pylist()]


def build_texts(batch: pa.RecordBatch | pa.Table, columns: Sequence[str], template: str = "") -> list[str]:
    """One text per row: the template with each {column} replaced by the row's value, or
    the columns' values joined with a new line. Nulls become empty strings."""
    values = {name: _as_strings(batch.column(name)) for name in columns}
    rows = batch.num_rows
    if not template:
        per_column = [values[name] for name in columns]
        if len(per_column) == 1:
            return per_column[0]
        return ["\n".join(parts) for parts in zip(*per_column, strict=True)]

    def render(i: int) -> str:
        def substitute(match: re.Match[str]) -> str:
            token = match.group(0)
            if token == "{{":
                return "{"
            if token == "}}":
                return "}"
            return values[match.group(1)][i]

        return _PLACEHOLDER.sub(substitute, template)

    return [render(i) for i in range(rows)]
