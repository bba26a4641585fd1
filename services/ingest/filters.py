"""The ListRows filter: a small grammar, parsed into pyarrow compute masks.

    filter     := conditions | text
    conditions := condition ( AND condition )*
    condition  := column op value
                | column contains string
                | column = null | column != null
    op         := = | != | < | <= | > | >=
    column     := a column name as a bare word (letters, digits, _ . -) or in `backquotes`
    value      := number | "text" | 'text' | true | false | bare word

Anything that does not start with `column op` is plain text: rows where some text column
contains it (case-insensitive); wrap it in quotes to search for text that looks like a
condition. `contains` and string `=` compare case-sensitively except `contains`, which
ignores case like the plain search. A condition naming an unknown column, a missing
value, or a value of the wrong kind (text for a number column) is INVALID_ARGUMENT."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from services.common.errors import InvalidArgument, excerpt

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<backquoted>`(?:[^`]|``)*`?)
      | (?P<string>"(?:[^"\\]|\\.)*"?|'(?:[^'\\]|\\.)*'?)
      | (?P<op><=|>=|!=|==|=|<|>)
      | (?P<word>[^\s=<>!"'`]+)
    )""",
    re.X,
)
_OPS = {
    "=": "equal",
    "==": "equal",
    "!=": "not_equal",
    "<": "less",
    "<=": "less_equal",
    ">": "greater",
    ">=": "greater_equal",
}


# Which rows of a table a filter keeps. (A string: pyarrow's classes are not generic at run time.)
Mask: TypeAlias = "pa.Array[Any] | pa.ChunkedArray[Any]"


@dataclass
class Token:
    kind: str
    text: str
    at: int  # 1-based character position in the filter


@dataclass
class Condition:
    column: str
    op: str  # one of _OPS values, or "contains"
    value: Any


@dataclass
class Filter:
    conditions: list[Condition]
    text: str  # plain-text search when there are no conditions

    def columns(self, text_columns: list[str]) -> list[str]:
        if self.conditions:
            return list(dict.fromkeys(c.column for c in self.conditions))
        return text_columns

    def mask(self, table: pa.Table, text_columns: list[str]) -> Mask:
        # pyarrow-stubs give these kernels no result type for chunked columns (or `object`):
        # call them untyped and type what they return, a boolean mask of the table's rows.
        compute: Any = pc
        if not self.conditions:
            mask: Mask | None = None
            for name in text_columns:
                hit: Mask = compute.fill_null(compute.match_substring(table[name], self.text, ignore_case=True), False)
                mask = hit if mask is None else compute.or_(mask, hit)
            return mask if mask is not None else pa.array([False] * table.num_rows)
        result: Mask | None = None
        for c in self.conditions:
            column = table[c.column]
            if c.op == "contains":
                hit = compute.match_substring(column, c.value, ignore_case=True)
            elif c.value is None:
                hit = compute.is_null(column) if c.op == "equal" else compute.is_valid(column)
            else:
                if isinstance(c.value, float) and pa.types.is_integer(column.type):
                    column = pc.cast(column, pa.float64())  # a fractional bound on whole numbers
                hit = getattr(compute, c.op)(column, pa.scalar(c.value, type=column.type))
            hit = compute.fill_null(hit, False)
            result = hit if result is None else compute.and_(result, hit)
        assert result is not None  # there is at least one condition
        return result


def _tokens(text: str) -> list[Token]:
    tokens, position = [], 0
    while position < len(text):
        if not text[position:].strip():
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise InvalidArgument(f"filter: cannot read {text[position:].strip()[:20]!r} at character {position + 1}")
        kind = match.lastgroup or "word"
        value = match.group(kind)
        tokens.append(Token(kind, value, match.start(kind) + 1))
        position = match.end()
    return tokens


def _unquote(token: Token) -> str:
    quote = token.text[0]
    if len(token.text) < 2 or token.text[-1] != quote:
        raise InvalidArgument(f"filter: the {quote} at character {token.at} is never closed")
    body = token.text[1:-1]
    if quote == "`":
        return body.replace("``", "`")
    return re.sub(r"\\(.)", r"\1", body)


def parse(text: str, schema: pa.Schema) -> Filter | None:
    text = text.strip()
    if not text:
        return None
    tokens = _tokens(text)
    starts_condition = (
        len(tokens) >= 2
        and tokens[0].kind in ("word", "backquoted")
        and (tokens[1].kind == "op" or (tokens[1].kind == "word" and tokens[1].text.lower() == "contains"))
    )
    if not starts_condition:
        if len(tokens) == 1 and tokens[0].kind == "string":
            return Filter([], _unquote(tokens[0]))
        return Filter([], text)
    conditions, i = [], 0
    names = [n for n in schema.names if n != "__row"]
    while True:
        if i + 1 >= len(tokens):
            raise InvalidArgument(
                'filter: a condition needs a column, an operator and a value, e.g. label = "neg" '
                f"(at character {tokens[i].at if i < len(tokens) else len(text)})"
            )
        column_token, op_token = tokens[i], tokens[i + 1]
        if column_token.kind not in ("word", "backquoted"):
            raise InvalidArgument(
                f"filter: expected a column name at character {column_token.at}, got {excerpt(column_token.text)!r}"
            )
        column = _unquote(column_token) if column_token.kind == "backquoted" else column_token.text
        if column not in names:
            raise InvalidArgument(f"filter: column '{excerpt(column)}' not found; the dataset has: {', '.join(names)}")
        is_contains = op_token.kind == "word" and op_token.text.lower() == "contains"
        if op_token.kind != "op" and not is_contains:
            raise InvalidArgument(
                f"filter: expected an operator (=, !=, <, <=, >, >=, contains) after '{excerpt(column)}' "
                f"at character {op_token.at}, got {excerpt(op_token.text)!r}"
            )
        if i + 2 >= len(tokens):
            raise InvalidArgument(f"filter: '{excerpt(column)} {op_token.text}' has no value after '{op_token.text}'")
        value_token = tokens[i + 2]
        type_ = schema.field(column).type
        conditions.append(_condition(column, type_, "contains" if is_contains else _OPS[op_token.text], value_token))
        i += 3
        if i >= len(tokens):
            break
        if tokens[i].kind != "word" or tokens[i].text.upper() != "AND":
            raise InvalidArgument(
                f"filter: expected AND or the end at character {tokens[i].at}, got {excerpt(tokens[i].text)!r}"
            )
        i += 1
    return Filter(conditions, "")


def _is_textual(type_: pa.DataType) -> bool:
    return bool(pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_))


def _condition(column: str, type_: pa.DataType, op: str, token: Token) -> Condition:
    if token.kind == "op":
        raise InvalidArgument(f"filter: expected a value at character {token.at}, got {excerpt(token.text)!r}")
    raw = _unquote(token) if token.kind in ("string", "backquoted") else token.text
    quoted = token.kind == "string"
    if op == "contains":
        if not _is_textual(type_):
            raise InvalidArgument(f"filter: 'contains' works on text columns; '{excerpt(column)}' holds {type_}")
        return Condition(column, op, raw)
    if not quoted and raw.lower() == "null":
        if op not in ("equal", "not_equal"):
            raise InvalidArgument("filter: null can only be compared with = or !=")
        return Condition(column, op, None)
    if _is_textual(type_):
        return Condition(column, op, raw)
    if pa.types.is_boolean(type_):
        if raw.lower() not in ("true", "false"):
            raise InvalidArgument(f"filter: column '{excerpt(column)}' holds true/false; {excerpt(raw)!r} is neither")
        return Condition(column, op, raw.lower() == "true")
    if pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_):
        try:
            number: float | int = int(raw) if re.fullmatch(r"[-+]?\d+", raw) else float(raw)
        except ValueError:
            raise InvalidArgument(
                f"filter: column '{excerpt(column)}' holds numbers; {excerpt(raw)!r} is not a number"
            ) from None
        return Condition(column, op, number)
    if pa.types.is_temporal(type_):
        try:
            pa.scalar(raw).cast(type_)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise InvalidArgument(
                f"filter: column '{excerpt(column)}' holds {type_}; {excerpt(raw)!r} is not one (use ISO 8601)"
            ) from None
        return Condition(column, op, pa.scalar(raw).cast(type_).as_py())
    raise InvalidArgument(f"filter: column '{excerpt(column)}' holds {type_}, which filters cannot compare")
