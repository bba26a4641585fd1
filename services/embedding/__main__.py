"""python -m services.embedding"""

from pathlib import Path

from services.common.app import run
from services.embedding.server import build

if __name__ == "__main__":
    run("embedding", "embedding", Path(__file__).parent / "migrations", build)
