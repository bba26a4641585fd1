"""Settings of the embedding service beyond the shared ones (environment variables, all
optional; docs/embedding.md has the table)."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


@dataclass(frozen=True)
class EmbeddingSettings:
    models: str  # EMBEDVIZ_MODELS: extra models (JSON, or name=path pairs)
    openai_base_url: str
    openai_model: str
    openai_api_key: str
    openai_dimension: int
    checkpoint_rows: int  # rows per checkpoint (one Arrow part file, one sort window)
    shard_rows: int  # rows per shard; shards are embedded in parallel by any worker
    batch_tokens: int  # padded tokens per forward pass
    ack_wait: float  # seconds before a silent worker's message goes to another worker
    heartbeat: float  # seconds between progress writes (also how fast a cancel is seen)
    device: str  # "auto", "cpu", "cuda", "cuda:1", "mps"
    precision: str  # "auto" (bf16/fp16 when it matches fp32), "float32", "bfloat16"
    torch_threads: int
    workers: int  # EMBEDVIZ_EMBED_WORKERS: job workers of this service; -1: EMBEDVIZ_WORKERS

    @classmethod
    def from_env(cls) -> EmbeddingSettings:
        return cls(
            models=os.environ.get("EMBEDVIZ_MODELS", ""),
            openai_base_url=os.environ.get("EMBEDVIZ_OPENAI_BASE_URL", ""),
            openai_model=os.environ.get("EMBEDVIZ_OPENAI_MODEL", ""),
            openai_api_key=os.environ.get("EMBEDVIZ_OPENAI_API_KEY", ""),
            openai_dimension=_int("EMBEDVIZ_OPENAI_DIMENSION", 0),
            checkpoint_rows=max(1, _int("EMBEDVIZ_EMBED_CHECKPOINT_ROWS", 4096)),
            shard_rows=max(1, _int("EMBEDVIZ_EMBED_SHARD_ROWS", 50_000)),
            batch_tokens=max(64, _int("EMBEDVIZ_EMBED_BATCH_TOKENS", 16_384)),
            ack_wait=max(2.0, _float("EMBEDVIZ_EMBED_ACK_WAIT", 60.0)),
            heartbeat=max(0.1, _float("EMBEDVIZ_EMBED_HEARTBEAT", 1.0)),
            device=os.environ.get("EMBEDVIZ_EMBED_DEVICE", "auto") or "auto",
            precision=os.environ.get("EMBEDVIZ_EMBED_PRECISION", "auto") or "auto",
            torch_threads=_int("EMBEDVIZ_TORCH_THREADS", 0),
            workers=_int("EMBEDVIZ_EMBED_WORKERS", -1),
        )
