"""The shortcuts the UMAP job path takes for speed give what umap itself gives."""

from __future__ import annotations

import numpy as np
import scipy.sparse

from services.projection import maps


def test_the_start_of_placed_rows_is_umaps_own_weighted_mean() -> None:
    import umap.umap_

    rng = np.random.default_rng(4)
    graph = scipy.sparse.random(600, 300, density=0.04, random_state=5, format="csr", dtype=np.float32)
    graph.data[::13] = 1.0  # a new row equal to a fitted one sits on it
    graph = graph.tolil()
    graph[7] = 0  # a row without neighbours
    graph = graph.tocsr()
    graph.eliminate_zeros()
    embedding = rng.normal(size=(300, 2)).astype(np.float32)
    maps.fast_graph_transform_start()
    original = maps.UMAPS_OWN["init_graph_transform"]
    assert umap.umap_.init_graph_transform is maps.graph_transform_start
    ours = maps.graph_transform_start(graph, embedding)
    theirs = original(graph, embedding)
    assert np.isnan(ours[7]).all() and np.isnan(theirs[7]).all()
    assert np.isnan(ours).sum() == np.isnan(theirs).sum() == 2
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    on_a_fitted_row = np.flatnonzero((graph == 1).sum(axis=1).A.ravel() > 0)
    assert len(on_a_fitted_row) > 10
    for row in on_a_fitted_row:  # exactly the fitted point's place, not near it
        assert any((ours[row] == embedding[col]).all() for col in graph[row].indices)


def test_placed_rows_land_by_their_fitted_neighbours() -> None:
    """Through `reduce` with a sample fit: each placed row's map neighbours are mostly its
    own group, as for the fitted rows."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 24)) * 4
    groups = rng.integers(0, 6, 5000)
    vectors = (centres[groups] + rng.normal(size=(5000, 24))).astype(np.float32)
    params = maps.MapParams(fit_rows=2000, pca_dims=0, n_epochs=maps.WARM_EPOCHS * 5)
    points = maps.reduce(vectors, params)
    assert np.isfinite(points).all()
    sample = maps.fit_sample(len(vectors), params)
    assert sample is not None
    placed = np.setdiff1d(np.arange(len(vectors)), sample)
    from sklearn.neighbors import NearestNeighbors

    near = NearestNeighbors(n_neighbors=6).fit(points).kneighbors(points[placed], return_distance=False)[:, 1:]
    assert (groups[near] == groups[placed][:, None]).mean() > 0.95


def test_large_fits_run_fewer_epochs_and_placing_keeps_umaps_count() -> None:
    assert maps.LARGE_FIT_EPOCHS < 200  # umap's count above 10,000 rows
    seen: list[tuple[int, int | None]] = []
    import umap

    real = umap.UMAP

    class Spy(real):  # type: ignore[misc,valid-type]
        def fit_transform(self, data, *args, **kwargs):  # type: ignore[no-untyped-def]
            seen.append((data.shape[0], self.n_epochs))
            return np.zeros((data.shape[0], 2), np.float32)

    umap.UMAP = Spy
    try:
        data = np.random.default_rng(1).normal(size=(maps.LARGE_FIT_ROWS, 8)).astype(np.float32)
        reducer, _ = maps._umap_fit(data, maps.MapParams(), "euclidean", maps._nothing, 10**9, False)
        small, _ = maps._umap_fit(data[:5000], maps.MapParams(), "euclidean", maps._nothing, 10**9, False)
        warm, _ = maps._umap_fit(data[:5000], maps.MapParams(n_epochs=6), "euclidean", maps._nothing, 10**9, False)
    finally:
        umap.UMAP = real
    assert seen == [(maps.LARGE_FIT_ROWS, maps.LARGE_FIT_EPOCHS), (5000, None), (5000, 6)]
    assert vars(reducer)["n_epochs"] is None  # transform then runs umap's own 30 / 100
    assert vars(warm)["n_epochs"] == 6
