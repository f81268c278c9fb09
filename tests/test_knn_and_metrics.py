import numpy as np
import pytest
from sklearn.metrics import roc_curve

from pipeline.errors import PipelineError
from pipeline.heads.knn.head import KNNHead
from pipeline.heads.knn.engine import knn_distances, knn_scores
from pipeline.metrics import detection_metrics, roc_points, summarise


def brute_force_knn_scores(gallery, queries, k):
    scores = []
    for q in queries.astype(np.float64):
        distances = sorted(float(((q - g) ** 2).sum()) for g in gallery.astype(np.float64))
        scores.append(sum(distances[:k]))
    return np.array(scores)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_knn_scores_match_brute_force_with_small_blocks(k):
    rng = np.random.default_rng(k)
    gallery = rng.normal(size=(53, 17)).astype(np.float32)
    queries = rng.normal(size=(29, 17)).astype(np.float32)
    expected = brute_force_knn_scores(gallery, queries, k)
    # Blocks smaller than both sets exercise the running top-k merge across gallery blocks.
    got = knn_scores(gallery, queries, k=k, query_block=7, gallery_block=10)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_knn_streams_gallery_blocks_and_accepts_float16():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(40, 8)).astype(np.float16)
    queries = rng.normal(size=(12, 8)).astype(np.float16)
    expected = brute_force_knn_scores(gallery.astype(np.float32), queries.astype(np.float32), 2)
    streamed = knn_scores((gallery[i:i + 9] for i in range(0, 40, 9)), queries, k=2)
    np.testing.assert_allclose(streamed, expected, rtol=1e-4, atol=1e-3)


def test_knn_workers_agree_and_leave_the_blas_thread_count_as_it_was():
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info

    def blas_threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(300, 24)).astype(np.float32)
    queries = rng.normal(size=(90, 24)).astype(np.float32)
    before = blas_threads()
    expected = brute_force_knn_scores(gallery, queries, 2)
    for workers in (1, 3):
        got = knn_scores(gallery, queries, k=2, query_block=8, gallery_block=64, workers=workers)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # Fewer queries than workers: the gallery block is split among the workers.
    big = rng.normal(size=(1000, 8)).astype(np.float32)
    for k in (1, 3):
        got = knn_scores(big, big[:1] + 0.1, k=k, workers=3)
        np.testing.assert_allclose(got, brute_force_knn_scores(big, big[:1] + 0.1, k), rtol=1e-4, atol=1e-4)
    # Calls side by side (as Dask's threads make them): the BLAS limit is shared, and restored
    # only when the last one ends. An empty block in a stream is skipped.
    stream = lambda: [gallery[:0], gallery[:150], gallery[:0], gallery[150:]]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: knn_scores(stream(), queries, k=2, query_block=16), range(12)))
    for got in results:
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert blas_threads() == before


def test_knn_distances_are_sorted_and_zero_for_gallery_members():
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(20, 6)).astype(np.float32) * 100
    distances = knn_distances(gallery, gallery[:5], k=3)
    assert distances.shape == (5, 3)
    assert np.all(np.diff(distances, axis=1) >= 0)
    np.testing.assert_allclose(distances[:, 0], 0, atol=1e-2)


def test_knn_needs_k_gallery_features():
    with pytest.raises(PipelineError, match="at least 3"):
        knn_scores(np.zeros((2, 4), np.float32), np.zeros((1, 4), np.float32), k=3)
    with pytest.raises(PipelineError, match="fewer than"):
        KNNHead(k=3).fit(np.zeros((2, 4), np.float32))
    with pytest.raises(PipelineError, match="dimension"):
        knn_scores(np.zeros((5, 4), np.float32), np.zeros((1, 3), np.float32), k=1)


def test_knn_head_fit_then_score_ranks_outliers_higher():
    rng = np.random.default_rng(2)
    normal = rng.normal(size=(100, 5)).astype(np.float32)
    head = KNNHead(k=2).fit(normal)
    scores = head.score_samples(np.vstack([rng.normal(size=(5, 5)), rng.normal(size=(5, 5)) + 8]).astype(np.float32))
    assert scores[5:].min() > scores[:5].max()


def brute_force_auroc(labels, scores):
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_detection_metrics_against_brute_force():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=300)
    scores = labels * 0.7 + rng.normal(size=300)
    scores[:20] = np.round(scores[:20])  # some ties
    metrics = detection_metrics(labels, scores)
    assert metrics["auroc"] == pytest.approx(brute_force_auroc(labels, scores), abs=1e-12)
    # FPR at 95% TPR: the smallest threshold-free FPR reachable while catching 95% of anomalies.
    thresholds = np.sort(np.unique(scores))[::-1]
    best = min(((scores[labels == 0] >= t).mean() for t in thresholds if (scores[labels == 1] >= t).mean() >= 0.95))
    assert metrics["fpr_at_95_tpr"] == pytest.approx(best)
    # AUPR with anomalies as positives is above the positive rate for an informative score.
    assert metrics["aupr"] > labels.mean()


def test_roc_points_are_a_thinned_roc_curve():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, size=5000)
    scores = rng.normal(size=5000) + labels
    points = roc_points(labels, scores, max_points=50)
    assert len(points) <= 50
    fpr, tpr, _ = roc_curve(labels, scores)
    assert points[0] == {"fpr": 0.0, "tpr": 0.0} and points[-1] == {"fpr": 1.0, "tpr": 1.0}
    assert all(a["fpr"] <= b["fpr"] and a["tpr"] <= b["tpr"] for a, b in zip(points, points[1:]))


def test_summarise_means_each_metric():
    assert summarise({"a": {"auroc": 0.5, "aupr": 1.0}, "b": {"auroc": 1.0, "aupr": 0.0}}) == {"auroc": 0.75, "aupr": 0.5}


def test_streamed_gallery_from_the_cache_gives_the_same_metrics(synthetic_cache):
    from pipeline.evaluate import evaluate_one_vs_all

    in_memory = evaluate_one_vs_all(synthetic_cache, KNNHead(k=2), [0, 1, 2])
    streamed = evaluate_one_vs_all(synthetic_cache, KNNHead(k=2), [0, 1, 2], train_access="stream")
    for name in in_memory:
        for metric, value in in_memory[name]["metrics"].items():
            assert streamed[name]["metrics"][metric] == pytest.approx(value, abs=1e-9)


def test_cache_rows_in_any_order_chunk_by_chunk(synthetic_cache):
    everything = synthetic_cache.features("train")
    rows = np.array([40, 3, 17, 16, 71, 0])  # across chunks of 16 rows, unordered
    np.testing.assert_array_equal(synthetic_cache.features("train", rows), everything[rows])
    blocks = list(synthetic_cache.iter_rows("train", "features", rows))
    assert len(blocks) == 4  # chunks 0, 1, 2 and 4
    np.testing.assert_array_equal(np.concatenate(blocks), everything[[3, 0, 17, 16, 40, 71]])  # chunk order


def test_knn_torch_path_used_on_the_gpu_matches_brute_force():
    # The GPU branch (addmm + topk per query block) run on CPU tensors: the same arithmetic.
    import torch

    from pipeline.heads.knn.engine import _BlockNearest

    rng = np.random.default_rng(4)
    gallery = rng.normal(size=(60, 12)).astype(np.float32)
    queries = rng.normal(size=(25, 12)).astype(np.float32)
    nearest = _BlockNearest(torch.from_numpy(queries), query_block=7)
    nearest.on_cpu = False
    with nearest:
        partial = nearest(torch.from_numpy(gallery), 3).numpy()
    got = np.sort(partial, axis=1).sum(1) + 3 * (queries.astype(np.float64) ** 2).sum(1)
    np.testing.assert_allclose(got, brute_force_knn_scores(gallery, queries, 3), rtol=1e-4, atol=1e-3)
