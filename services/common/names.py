"""Resource names (AIP-122): `projects/{project}/datasets/{dataset}` and friends."""

from __future__ import annotations

import re
import uuid

from services.common.errors import InvalidArgument, excerpt

_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}"


def parse(name: str, pattern: str) -> dict[str, str]:
    """Parse `name` against a pattern such as "projects/{project}/datasets/{dataset}"."""
    regex = "^" + re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m.group(1)}>{_SEGMENT})", pattern) + "$"
    match = re.match(regex, name or "")
    if match is None:
        raise InvalidArgument(f"'{excerpt(name)}' is not a valid resource name; expected {pattern}")
    return match.groupdict()


def new_id() -> str:
    return uuid.uuid4().hex


def project_of(name: str) -> str:
    """`projects/{p}` of any name inside a project."""
    parts = (name or "").split("/")
    if len(parts) < 2 or parts[0] != "projects" or not parts[1]:
        raise InvalidArgument(f"'{excerpt(name)}' is not a resource name inside a project")
    return "/".join(parts[:2])
