"""python -m services.ingest"""

from pathlib import Path

from services.common.app import run
from services.ingest.server import build

if __name__ == "__main__":
    run("ingest", "ingest", Path(__file__).parent / "migrations", build)
