import os
from pathlib import Path

# Numba compiles UMAP on first use; keep its cache between runs (as `make test` does).
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[2] / "build" / "numba-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
