"""Settings of the projection service beyond the shared ones (environment variables, all
optional; docs/projection.md has the table). Read once when the process starts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services.common.config import Environ, Settings, flag, text, whole
from services.projection import maps
from services.projection.vectors import DEFAULT_BUDGET_BYTES


@dataclass(frozen=True)
class ProjectionSettings:
    cache_dir: str = ""  # EMBEDVIZ_PROJECTION_CACHE_DIR; empty: $EMBEDVIZ_DATA_DIR/cache/projection
    vector_cache_bytes: int = DEFAULT_BUDGET_BYTES  # EMBEDVIZ_PROJECTION_VECTOR_CACHE_MB (search vectors on disk)
    warm_up: bool = True  # EMBEDVIZ_PROJECTION_WARM_UP=0: no numba warm-up (a PCA / t-SNE only worker)
    fit_rows: int = maps.DEFAULT_FIT_ROWS  # EMBEDVIZ_PROJECTION_FIT_ROWS: above this, fit on a sample (0: never)
    pca_dims: int = maps.DEFAULT_PCA_DIMS  # EMBEDVIZ_PROJECTION_PCA_DIMS: pre-reduce wider vectors (0: never)
    pca_min_rows: int = maps.DEFAULT_PCA_MIN_ROWS  # EMBEDVIZ_PROJECTION_PCA_MIN_ROWS: below this, UMAP skips PCA

    @classmethod
    def from_env(cls, env: Environ | None = None) -> ProjectionSettings:
        env = os.environ if env is None else env
        megabytes = whole(env, "EMBEDVIZ_PROJECTION_VECTOR_CACHE_MB", DEFAULT_BUDGET_BYTES >> 20, minimum=0)
        return cls(
            cache_dir=text(env, "EMBEDVIZ_PROJECTION_CACHE_DIR").strip(),
            vector_cache_bytes=megabytes << 20,
            warm_up=flag(env, "EMBEDVIZ_PROJECTION_WARM_UP", True),
            fit_rows=whole(env, "EMBEDVIZ_PROJECTION_FIT_ROWS", maps.DEFAULT_FIT_ROWS, minimum=0),
            pca_dims=whole(env, "EMBEDVIZ_PROJECTION_PCA_DIMS", maps.DEFAULT_PCA_DIMS, minimum=0),
            pca_min_rows=whole(env, "EMBEDVIZ_PROJECTION_PCA_MIN_ROWS", maps.DEFAULT_PCA_MIN_ROWS, minimum=0),
        )

    def cache_path(self, shared: Settings) -> Path:
        """Local files of this service (memory-mapped vectors, the fits' arrays)."""
        return Path(self.cache_dir) if self.cache_dir else shared.data_dir / "cache" / "projection"
