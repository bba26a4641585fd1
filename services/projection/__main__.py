"""python -m services.projection"""

from pathlib import Path

from services.common.app import run
from services.projection.maps import ensure_numba_cache
from services.projection.server import build

if __name__ == "__main__":
    ensure_numba_cache()  # before anything imports numba
    run("projection", "projection", Path(__file__).parent / "migrations", build)
