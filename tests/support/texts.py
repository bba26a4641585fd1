"""Small real-looking text tables for tests: sentences on a few distinct topics, plus
near-duplicate pairs whose points must land close together on the map."""

from __future__ import annotations

import csv
import io
import random

TOPICS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "cooking": (
        ["The chef", "My grandmother", "A home cook", "The baker", "Our kitchen team"],
        ["slowly simmered", "roasted", "seasoned", "baked", "chopped and fried"],
        ["the tomato sauce with garlic and basil", "a loaf of sourdough bread", "the onions in butter",
         "a chicken with rosemary and lemon", "vegetables for the soup"],
    ),
    "space": (
        ["The rocket", "A space probe", "The astronaut", "The new telescope", "The lunar lander"],
        ["launched toward", "photographed", "orbited", "measured the light of", "landed near"],
        ["a distant galaxy", "the rings of Saturn", "the surface of Mars", "a comet near the sun",
         "the dark side of the moon"],
    ),
    "programming": (
        ["The compiler", "A junior developer", "The test suite", "Our database server", "The Python script"],
        ["crashed while parsing", "refactored", "optimised the loop in", "found a bug in", "deployed"],
        ["the JSON configuration file", "the sorting algorithm", "a memory leak in the cache",
         "the web service API", "the unit tests of the parser"],
    ),
    "football": (
        ["The striker", "The goalkeeper", "The home team", "The referee", "The coach"],
        ["scored against", "defended the penalty from", "celebrated the win over", "argued with",
         "trained hard before facing"],
        ["the league champions", "the rival club in the derby", "the visiting team in the final",
         "the defenders at the stadium", "the cup holders"],
    ),
}

NEAR_DUPLICATES = [
    ("The volcano erupted and covered the village in grey ash.",
     "The volcano erupted and covered the village in grey ash!"),
    ("Please reset your password using the link in this email.",
     "Please reset your password using the link in the email."),
    ("Fresh strawberries are sweetest in early summer.",
     "Fresh strawberries are the sweetest in early summer."),
]


def rows(n: int, seed: int = 7) -> list[dict[str, str]]:
    """n rows: the near-duplicate pairs first (ids 0..5), then topic sentences."""
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    for a, b in NEAR_DUPLICATES:
        out.append({"title": "pair", "text": a, "topic": "pair"})
        out.append({"title": "pair", "text": b, "topic": "pair"})
    names = sorted(TOPICS)
    while len(out) < n:
        topic = names[len(out) % len(names)]
        subjects, verbs, objects = TOPICS[topic]
        text = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}."
        out.append({"title": f"{topic} note {len(out)}", "text": text, "topic": topic})
    for i, row in enumerate(out):
        row["id"] = str(i)
    return out[:n]


def csv_bytes(table: list[dict[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["id", "title", "text", "topic"])
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue().encode()
