"""Cluster labels a person reads (services/projection/labels.py) and the cluster levels
(services/projection/hierarchy.py): pure functions, no servers."""

from __future__ import annotations

import numpy as np
import pytest

from services.projection import hierarchy, labels


@pytest.mark.parametrize(
    ("a", "b"),
    [("file", "files"), ("library", "libraries"), ("file", "filesystem"), ("Box", "boxes"), ("tool", "tools")],
)
def test_word_forms_of_one_word_count_as_a_repeat(a: str, b: str) -> None:
    assert labels.repeats(b, [a]) and labels.repeats(a, [b])


@pytest.mark.parametrize(("a", "b"), [("game", "graphics"), ("art", "artist"), ("perl", "python"), ("bus", "busy")])
def test_different_words_are_not_a_repeat(a: str, b: str) -> None:
    assert not labels.repeats(b, [a])


def test_a_phrase_repeats_the_words_it_holds() -> None:
    assert labels.repeats("window manager", ["managers"])
    assert labels.repeats("manager", ["window manager"])
    assert not labels.repeats("window manager", ["desktop"])


GROUPS = {
    "fruit": ["apple juice from the orchard", "fresh apples and pears", "pear and apple orchard harvest",
              "juice of ripe apples", "orchard fruit: apples, pears"],
    "cars": ["engine and wheels of a car", "car engine repair in the garage", "brakes and wheels for cars",
             "the garage fixes car brakes", "a car engine with new wheels"],
}


def _texts() -> tuple[list[str], np.ndarray]:
    texts, ids = [], []
    for gid, sentences in enumerate(GROUPS.values()):
        for _ in range(6):
            texts.extend(sentences)
            ids.extend([gid] * len(sentences))
    return texts, np.array(ids, dtype=np.int32)


def test_candidates_are_words_and_phrases_of_their_own_cluster_with_one_form_each() -> None:
    texts, ids = _texts()
    found = labels.candidates(texts, ids)
    fruit, cars = found.terms[0], found.terms[1]
    assert fruit[0] in {"apple", "apples", "orchard", "pear", "pears", "juice"} or " " in fruit[0], fruit
    assert {"car", "cars", "engine", "wheels", "brakes", "garage"} & set(" ".join(cars).split()), cars
    for terms in (fruit, cars):
        for i, term in enumerate(terms):
            assert not labels.repeats(term, terms[:i]), terms  # no "apple, apples"
    assert not set(fruit) & set(cars)


def test_noise_gets_no_terms_and_the_unclustered_label() -> None:
    texts, ids = _texts()
    ids = ids.copy()
    ids[:5] = labels.NOISE
    found = labels.candidates(texts, ids)
    assert labels.NOISE not in found.terms
    assert labels.label_from([], labels.NOISE) == labels.NOISE_LABEL


def test_a_label_is_a_phrase_or_up_to_three_words() -> None:
    assert labels.label_from(["window manager", "desktop", "tiling"], 0) == "window manager, desktop"
    assert labels.label_from(["games", "strategy", "puzzle", "arcade"], 1) == "games, strategy, puzzle"
    assert labels.label_from(["free software foundation", "gnu"], 2) == "free software foundation"
    assert labels.label_from([], 3) == "cluster 3"


def test_rerank_prefers_terms_near_the_centroid_and_unlike_each_other() -> None:
    # two near-synonyms close to the centroid and one different term a little further away
    vectors = {
        "music": np.array([1.0, 0.0, 0.0]),
        "songs": np.array([0.98, 0.199, 0.0]),
        "audio": np.array([0.7, -0.3, 0.648]),
    }
    vectors = {t: v / np.linalg.norm(v) for t, v in vectors.items()}
    centroid = np.array([1.0, 0.0, 0.0])
    order = labels.rerank(["songs", "music", "audio"], [1.0, 0.9, 0.8], centroid, vectors)
    assert order[0] in {"music", "songs"} and order[1] == "audio", order


def test_a_childs_terms_put_its_parents_words_last() -> None:
    order = labels.rerank(["games", "strategy", "puzzle"], [3.0, 2.0, 1.0], None, None, avoid=["game"])
    assert order == ["strategy", "puzzle", "games"]


def _groups(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """16 fine groups in 4 families: unit vectors near a family direction plus a group offset."""
    family = rng.normal(size=(4, 32))
    centroids, sizes = [], []
    for f in range(4):
        for _ in range(4):
            c = family[f] * 4 + rng.normal(size=32)
            centroids.append(c / np.linalg.norm(c))
            sizes.append(int(rng.integers(20, 200)))
    return np.array(centroids, dtype=np.float32), np.array(sizes)


def test_levels_nest_and_merge_clusters_by_meaning() -> None:
    rng = np.random.default_rng(5)
    centroids, sizes = _groups(rng)
    fine = np.repeat(np.arange(16, dtype=np.int32), 3)
    fine[::7] = hierarchy.NOISE
    tree = hierarchy.build(fine, centroids, sizes)
    assert hierarchy.level_sizes(16) == [6, 3]
    assert tree.depth == 3 and tree.levels[0] == list(range(16))
    # every cluster of a level has exactly one parent on the level above, which exists there
    for below, mapping in enumerate(tree.parents):
        assert sorted(mapping) == tree.levels[below]
        assert set(mapping.values()) == set(tree.levels[below + 1])
    # ids are unique across levels
    every = [cid for ids in tree.levels for cid in ids]
    assert len(every) == len(set(every))
    # nesting: rows of one fine cluster share their cluster at every level; noise stays noise
    for level in range(tree.depth):
        rows = tree.rows_at(level)
        assert (rows[fine == hierarchy.NOISE] == hierarchy.NOISE).all()
        for cid in range(16):
            assert len(set(rows[fine == cid].tolist())) == 1
    # the four families of the middle level are not split across the top level
    top = tree.rows_at(2)
    for f in range(4):
        family_rows = np.isin(fine, np.arange(4 * f, 4 * f + 4))
        assert len(set(top[family_rows].tolist())) == 1


def test_few_clusters_have_one_level() -> None:
    centroids, sizes = _groups(np.random.default_rng(1))
    tree = hierarchy.build(np.zeros(3, dtype=np.int32), centroids[:3], sizes[:3])
    assert tree.depth == 1 and tree.parents == []


def test_unit_centroids_average_the_members_directions() -> None:
    vectors = np.array([[2, 0], [0, 3], [5, 5], [-1, 0]], dtype=np.float32)
    rows = np.array([0, 0, 1, hierarchy.NOISE], dtype=np.int32)
    c = hierarchy.unit_centroids(vectors, rows, [0, 1], batch=3)
    np.testing.assert_allclose(c, [[np.sqrt(0.5), np.sqrt(0.5)], [np.sqrt(0.5), np.sqrt(0.5)]], atol=1e-6)
