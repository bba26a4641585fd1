"""What every request must look like before a handler sees it, for every RPC of every
service: no control characters in strings, and a limit on the length of every string and
on the number of values of every repeated field. The request is walked through its
protobuf descriptor (nested messages, repeated fields, maps), so a new RPC or field is
covered without code; only fields that need something else than the defaults are named
here. bytes fields keep the limits their services set (upload chunks, vectors).

A refusal is INVALID_ARGUMENT naming the field by its path in the request, e.g.
"project.display_name contains a control character (U+0000) at character 4". The rules
are documented in docs/architecture.md ("Input rules")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from services.common.errors import InvalidArgument, excerpt

# Ordinary strings (names, emails, file names, tokens, column names): one line of text.
DEFAULT_STRING_CHARS = 4096
# Repeated fields: values a request may carry in one.
DEFAULT_REPEATED_VALUES = 1000

# Strings that legitimately hold multi-line text (tab, newline and carriage return are
# allowed in them) and the characters each may hold. Where a service has a tighter limit
# of its own (a project description: 10,000) it still applies, with its own message.
TEXT_FIELDS: dict[str, int] = {
    "embedviz.v1.Project.description": 16_384,
    "embedviz.v1.Embedding.template": 16_384,
    "embedviz.v1.ListRowsRequest.filter": 16_384,
    "embedviz.v1.SearchPointsRequest.query": 16_384,
    # The embedding service's own limit per text (services/embedding/servicer.py).
    "embedviz.v1.EmbedTextsRequest.texts": 100_000,
}

# Repeated fields that may carry more than DEFAULT_REPEATED_VALUES.
REPEATED_LIMITS: dict[str, int] = {
    # Column lists: a dataset may have up to EMBEDVIZ_MAX_COLUMNS (2,000 by default).
    "embedviz.v1.ListRowsRequest.columns": 10_000,
    "embedviz.v1.BatchGetRowsRequest.columns": 10_000,
    "embedviz.v1.StreamRowsRequest.columns": 10_000,
    "embedviz.v1.ExportProjectionRequest.columns": 10_000,
    "embedviz.v1.Embedding.text_columns": 10_000,
    "embedviz.v1.Embedding.vector_columns": 10_000,
    # A lasso on a large map selects many rows; bounded by the message size (64 MiB) too.
    "embedviz.v1.ExportProjectionRequest.row_indexes": 10_000_000,
}

# C0 and C1 control characters and DEL (Unicode category Cc). Tab is fine everywhere (a
# CSV delimiter may be one); newline and carriage return only in multi-line text.
_CONTROL_IN_LINE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROL_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class StringRule:
    max_chars: int
    control: re.Pattern[str]


def _string_rule(field: FieldDescriptor) -> StringRule:
    text_limit = TEXT_FIELDS.get(field.full_name)
    if text_limit is not None:
        return StringRule(text_limit, _CONTROL_IN_TEXT)
    return StringRule(DEFAULT_STRING_CHARS, _CONTROL_IN_LINE)


def check_string(value: str, path: str, rule: StringRule) -> None:
    if len(value) > rule.max_chars:
        raise InvalidArgument(
            f"{path} holds {len(value)} characters; at most {rule.max_chars} are accepted", "FIELD_TOO_LONG"
        )
    found = rule.control.search(value)
    if found is not None:
        raise InvalidArgument(
            f"{path} contains a control character (U+{ord(found.group()):04X}) at character {found.start() + 1}; "
            "remove it",
            "CONTROL_CHARACTER",
        )


def _check_count(field: FieldDescriptor, count: int, path: str) -> None:
    limit = REPEATED_LIMITS.get(field.full_name, DEFAULT_REPEATED_VALUES)
    if count > limit:
        raise InvalidArgument(f"{path} holds {count} values; at most {limit} are accepted", "TOO_MANY_VALUES")


def _check_value(field: FieldDescriptor, value: Any, path: str) -> None:
    # `value` is what protobuf holds for the field: a str for a string, a Message for a message.
    if field.type == FieldDescriptor.TYPE_STRING:
        check_string(value, path, _string_rule(field))
    elif field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        _check_message(value, f"{path}.")


def _check_message(message: Message, prefix: str) -> None:
    for field, value in message.ListFields():  # only fields that are set
        path = prefix + field.name
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:  # a map field
            _check_count(field, len(value), path)
            key_field = entry.fields_by_name["key"]
            value_field = entry.fields_by_name["value"]
            for key, item in value.items():
                key_path = f"{path}[{excerpt(key, 40)!r}]" if isinstance(key, str) else f"{path}[{key}]"
                _check_value(key_field, key, f"{path} key")
                _check_value(value_field, item, key_path)
        elif field.is_repeated:  # protobuf >= 7 has no `label` any more
            _check_count(field, len(value), path)
            if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
                for index, item in enumerate(value):
                    _check_value(field, item, f"{path}[{index}]")
        else:
            _check_value(field, value, path)


def check_request(request: Message) -> None:
    """Raise InvalidArgument naming the first field of `request` that breaks a rule."""
    _check_message(request, "")
