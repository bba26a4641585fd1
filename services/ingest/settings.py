"""Settings of the ingest service beyond the shared ones (environment variables, all
optional; docs/ingest.md has the table). Read once when the process starts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

from services.common.config import Environ, whole
from services.ingest.reading import Limits

GIB = 1024**3


@dataclass(frozen=True)
class IngestSettings:
    """Limits and upload housekeeping, from EMBEDVIZ_* variables (docs/ingest.md)."""

    max_upload_bytes: int = 2 * GIB
    max_user_bytes: int = 50 * GIB
    upload_ttl: timedelta = timedelta(hours=24)
    sweep_interval: float = 300.0
    progress_interval: float = 0.5
    # rows per committed part of an import: a killed import resumes after its last part
    import_part_rows: int = 1_000_000
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls, env: Environ | None = None) -> IngestSettings:
        env = os.environ if env is None else env
        default = Limits()
        return cls(
            max_upload_bytes=whole(env, "EMBEDVIZ_MAX_UPLOAD_BYTES", 2 * GIB, minimum=1),
            max_user_bytes=whole(env, "EMBEDVIZ_MAX_USER_BYTES", 50 * GIB, minimum=1),
            upload_ttl=timedelta(seconds=whole(env, "EMBEDVIZ_UPLOAD_TTL_SECONDS", 24 * 3600, minimum=1)),
            sweep_interval=whole(env, "EMBEDVIZ_UPLOAD_SWEEP_MS", 300_000, minimum=1) / 1000,
            progress_interval=whole(env, "EMBEDVIZ_PROGRESS_INTERVAL_MS", 500, minimum=1) / 1000,
            import_part_rows=whole(env, "EMBEDVIZ_IMPORT_PART_ROWS", 1_000_000, minimum=1),
            limits=Limits(
                max_rows=whole(env, "EMBEDVIZ_MAX_ROWS", default.max_rows, minimum=1),
                max_columns=whole(env, "EMBEDVIZ_MAX_COLUMNS", default.max_columns, minimum=1),
                max_cell_bytes=whole(env, "EMBEDVIZ_MAX_CELL_BYTES", default.max_cell_bytes, minimum=1),
            ),
        )
