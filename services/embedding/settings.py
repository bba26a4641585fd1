"""Settings of the embedding service beyond the shared ones (environment variables, all
optional; docs/embedding.md has the table)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from services.common.config import Environ, number, text, whole


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
    def from_env(cls, env: Environ | None = None) -> EmbeddingSettings:
        env = os.environ if env is None else env
        return cls(
            models=text(env, "EMBEDVIZ_MODELS"),
            openai_base_url=text(env, "EMBEDVIZ_OPENAI_BASE_URL"),
            openai_model=text(env, "EMBEDVIZ_OPENAI_MODEL"),
            openai_api_key=text(env, "EMBEDVIZ_OPENAI_API_KEY"),
            openai_dimension=whole(env, "EMBEDVIZ_OPENAI_DIMENSION", 0, minimum=0),
            checkpoint_rows=whole(env, "EMBEDVIZ_EMBED_CHECKPOINT_ROWS", 4096, minimum=1),
            shard_rows=whole(env, "EMBEDVIZ_EMBED_SHARD_ROWS", 50_000, minimum=1),
            batch_tokens=whole(env, "EMBEDVIZ_EMBED_BATCH_TOKENS", 16_384, minimum=64),
            ack_wait=number(env, "EMBEDVIZ_EMBED_ACK_WAIT", 60.0, minimum=2.0),
            heartbeat=number(env, "EMBEDVIZ_EMBED_HEARTBEAT", 1.0, minimum=0.1),
            device=text(env, "EMBEDVIZ_EMBED_DEVICE", "auto"),
            precision=text(env, "EMBEDVIZ_EMBED_PRECISION", "auto"),
            torch_threads=whole(env, "EMBEDVIZ_TORCH_THREADS", 0, minimum=0),
            workers=whole(env, "EMBEDVIZ_EMBED_WORKERS", -1, minimum=-1),
        )
