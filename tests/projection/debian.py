"""Real labelled text: Debian package descriptions with their section, read from
`apt-cache dumpavail` (the package lists apt already has on the machine)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Package:
    name: str
    section: str
    summary: str  # the one-line description
    description: str  # the long description, paragraphs joined


def available() -> bool:
    return shutil.which("apt-cache") is not None


def packages() -> list[Package]:
    """Every package apt knows of (one entry per name), in the order apt lists them.
    Empty when apt-cache is missing or has no lists (run `apt-get update` first)."""
    if not available():
        return []
    out = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=False).stdout
    seen: set[str] = set()
    result: list[Package] = []
    for stanza in out.split("\n\n"):
        fields: dict[str, str] = {}
        long: list[str] = []
        key = ""
        for line in stanza.splitlines():
            if line.startswith(" ") and key == "Description":
                text = line.strip()
                if text != ".":
                    long.append(text)
            elif ":" in line and not line.startswith(" "):
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        name = fields.get("Package", "")
        if not name or name in seen or "Description" not in fields:
            continue
        seen.add(name)
        section = fields.get("Section", "").rsplit("/", 1)[-1]
        result.append(Package(name, section, fields["Description"], " ".join(long)))
    return result
