"""The PatchCore head (pipeline/heads/patchcore) against plain reference computations: the
greedy coreset against a numpy loop, patch scores against brute-force distances, the
reweighted image score (eq. 7) and the leave-one-image-out training scores against the
formula with brute-force neighbours, the locally aware features against explicit
neighbourhood means; then a synthetic localisation, save/load, clone and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist
from sklearn.base import clone

from pipeline.errors import PipelineError
from pipeline.heads.base import Features
from pipeline.heads.patchcore.head import PatchCoreHead
from pipeline.heads.patchcore.model import (
    coreset_draws,
    greedy_coreset,
    layer_vectors,
    patch_features,
    reduce_channels,
)

FINE, COARSE = "stride8", "stride16"  # 8 channels at 8 x 8, 16 channels at 4 x 4


def maps(n: int, seed: int = 0, shift: dict[int, tuple[slice, slice]] | None = None) -> Features:
    """Random normal maps of two layers; ``shift``: image -> (rows, columns) of the fine grid
    whose patches are moved far away (a local anomaly)."""
    rng = np.random.default_rng(seed)
    fine = rng.normal(size=(n, 8, 8, 8)).astype(np.float32)
    coarse = rng.normal(size=(n, 16, 4, 4)).astype(np.float32)
    for image, (rows, columns) in (shift or {}).items():
        fine[image, :, rows, columns] += 6.0
    return Features(np.zeros((n, 1), np.float32), trunk={FINE: fine.astype(np.float16), COARSE: coarse.astype(np.float16)})


def small(**changes) -> PatchCoreHead:
    return PatchCoreHead(**{"device": "cpu", "coreset_fraction": 0.25, "projection_dim": 8, **changes})


# --- the coreset ------------------------------------------------------------------------------

def plain_greedy(points: np.ndarray, count: int, start: int) -> list[int]:
    """Greedy k-center, O(n x count): each next row the farthest from those chosen."""
    chosen, nearest, index = [], np.full(len(points), np.inf), start
    for _ in range(count):
        chosen.append(index)
        nearest = np.minimum(nearest, ((points - points[index]) ** 2).sum(1))
        index = int(np.argmax(nearest))
    return chosen


@pytest.mark.parametrize("projection_dim", [8, None])
def test_greedy_coreset_is_the_plain_loop_on_the_same_projection(projection_dim):
    rows = (np.random.default_rng(1).normal(size=(400, 24)) + 5.0).astype(np.float32)  # a common mean, as CNN maps
    matrix, start = coreset_draws(24, 400, projection_dim, seed=3)
    assert (matrix is None) == (projection_dim is None) and 0 <= start < 400
    points = rows.astype(np.float64) if matrix is None else rows.astype(np.float64) @ matrix.double().numpy()
    chosen = greedy_coreset(rows, 40, projection_dim, seed=3, device="cpu")
    assert chosen.tolist() == plain_greedy(points, 40, start)
    # Seeded: the same seed, the same coreset; another seed starts elsewhere.
    assert greedy_coreset(rows, 40, projection_dim, seed=3).tolist() == chosen.tolist()
    assert coreset_draws(24, 400, projection_dim, seed=4)[1] != start or projection_dim is None
    # All rows: a permutation.
    assert sorted(greedy_coreset(rows[:50], 50, projection_dim, seed=0).tolist()) == list(range(50))


def test_a_projection_no_smaller_than_the_rows_is_none():
    assert coreset_draws(24, 10, 24, 0)[0] is None and coreset_draws(24, 10, 100, 0)[0] is None


# --- locally aware patch features ------------------------------------------------------------

def neighbourhood_means(grid: np.ndarray, p: int) -> np.ndarray:
    """(C, H, W) -> the mean over each position's p x p neighbourhood, of the cells inside."""
    channels, height, width = grid.shape
    out = np.zeros_like(grid, dtype=np.float64)
    for r in range(height):
        for c in range(width):
            rows = slice(max(0, r - p // 2), min(height, r + p // 2 + 1))
            columns = slice(max(0, c - p // 2), min(width, c + p // 2 + 1))
            out[:, r, c] = grid[:, rows, columns].reshape(channels, -1).mean(1)
    return out


@pytest.mark.parametrize("p", [3, 5])
def test_locally_aware_features_are_neighbourhood_means(p):
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 3, 5, 5)), rng.normal(size=(2, 4, 5, 5))
    features = Features(np.zeros((2, 1)), trunk={"a": a.astype(np.float16), "b": b.astype(np.float16)})
    # share 4: a (3 channels) weighted by sqrt(4/3), b (4 channels) kept as it is; 7 channels.
    got = patch_features(features, ["a", "b"], slice(None), p, share=4).numpy()
    for image in range(2):
        expected = np.concatenate([neighbourhood_means(m[image].astype(np.float16).astype(np.float64), p) * weight
                                   for m, weight in ((a, np.sqrt(4 / 3)), (b, 1.0))])
        np.testing.assert_allclose(got[image], expected.transpose(1, 2, 0), rtol=1e-5, atol=1e-6)
    # A coarser layer: its neighbourhood means, then bilinear to the finest grid.
    features = Features(np.zeros((2, 1)), trunk={"a": a.astype(np.float16), "c": b[:, :, :3, :3].astype(np.float16)})
    got = patch_features(features, ["a", "c"], slice(0, 1), p, share=4)[0].numpy()
    means = torch.tensor(neighbourhood_means(b[0, :, :3, :3].astype(np.float16).astype(np.float64), p))
    up = F.interpolate(means[None].float(), size=(5, 5), mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(got[..., 3:], up.transpose(1, 2, 0), rtol=1e-5, atol=1e-6)


def test_channels_are_reduced_by_adaptive_average_pooling():
    vectors = torch.randn(6, 24)
    reduced = reduce_channels(vectors, 10).numpy()
    for i in range(10):  # output channel i: the mean of input channels floor(24 i / 10) .. ceil(24 (i+1) / 10) - 1
        first, stop = (24 * i) // 10, -(-(24 * (i + 1)) // 10)
        np.testing.assert_allclose(reduced[:, i], vectors[:, first:stop].mean(1).numpy(), rtol=1e-5, atol=1e-6)
    assert reduce_channels(vectors, 24) is vectors and reduce_channels(vectors, 1024) is vectors
    train = maps(3)
    # dim shared equally by the two layers (8 and 16 channels): 10 -> 5 each, pooled from both.
    assert small(dim=10).fit(train).bank_.shape[1] == 10
    assert small(dim="native").fit(train).bank_.shape[1] == 24 == small().fit(train).bank_.shape[1]


def test_every_layer_weighs_the_same_as_the_authors_pooling_up_would_make_it():
    """A narrower layer kept whole and weighted by sqrt(share / C) gives the squared distances
    of its channels each repeated share / C times (the authors' adaptive pooling up, where the
    ratio is whole)."""
    rng = np.random.default_rng(4)
    x, y = torch.tensor(rng.normal(size=(5, 8)), dtype=torch.float32), torch.tensor(rng.normal(size=(5, 8)),
                                                                                  dtype=torch.float32)
    repeated = lambda v: v.repeat_interleave(4, dim=-1)  # noqa: E731 - 8 channels, 32 channels' worth
    np.testing.assert_allclose(((layer_vectors(x, 32) - layer_vectors(y, 32)) ** 2).sum(-1).numpy(),
                               ((repeated(x) - repeated(y)) ** 2).sum(-1).numpy(), rtol=1e-5)
    assert torch.equal(layer_vectors(x, 4), reduce_channels(x, 4))  # a wider layer: pooled to its share
    # So two layers of 8 and 16 channels with dim 64 (32 each) weigh the same: the same spread of
    # values gives the same mean squared distance in each part.
    head = small(dim=64).fit(maps(6))
    fine, coarse = head.bank_[:, :8], head.bank_[:, 8:]
    assert fine.var(0).sum() / coarse.var(0).sum() == pytest.approx(1.0, rel=0.3)


# --- scores against brute force ----------------------------------------------------------------

def brute_image_score(patches: np.ndarray, bank: np.ndarray, b: int) -> tuple[np.ndarray, float]:
    """Patch scores and eq. 7 of one image's patch vectors (P, D), with brute-force neighbours."""
    distances = cdist(patches.astype(np.float64), bank.astype(np.float64))
    scores = distances.min(1)
    worst = int(scores.argmax())
    if not b:
        return scores, float(scores[worst])
    star = int(distances[worst].argmin())
    support = np.argsort(cdist(bank[star:star + 1].astype(np.float64), bank.astype(np.float64))[0],
                         kind="stable")[:min(b, len(bank))]
    assert star in support or np.allclose(bank[support[0]], bank[star])
    weight = 1 - np.exp(distances[worst, star]) / np.exp(distances[worst, support]).sum()
    return scores, float(weight * scores[worst])


def patch_vectors(head: PatchCoreHead, features: Features) -> np.ndarray:
    return head._patches(features, slice(None)).numpy()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_patch_scores_are_distances_to_the_nearest_bank_vector(precision):
    head = small(precision=precision).fit(maps(6))
    test = maps(3, seed=1)
    expected = cdist(patch_vectors(head, test).reshape(-1, 24), head.bank_.numpy().astype(np.float64)).min(1)
    np.testing.assert_allclose(head.patch_scores(test).ravel(), expected, rtol=1e-4)
    assert head.patch_scores(test).shape == (3, 8, 8)


@pytest.mark.parametrize("b", [9, 3, 0])
def test_the_image_score_is_eq_7_with_brute_force_neighbours(b):
    head = small(reweight_neighbours=b).fit(maps(6))
    test = maps(4, seed=1, shift={0: (slice(2, 4), slice(2, 4))})
    bank = head.bank_.numpy()
    expected = [brute_image_score(patches, bank, b)[1] for patches in patch_vectors(head, test)]
    np.testing.assert_allclose(head.score_samples(test), expected, rtol=1e-4)
    if b:
        assert (head.score_samples(test) < head.patch_scores(test).reshape(4, -1).max(1)).all()


def test_training_scores_leave_each_image_out_of_the_bank():
    train = maps(5)
    head = small(coreset_fraction=0.5).fit(train)
    bank, images = head.bank_.numpy(), head.bank_images_
    assert (np.diff(images) >= 0).all() and set(images) == set(range(5))
    expected = [brute_image_score(patches, bank[images != i], 9)[1]
                for i, patches in enumerate(patch_vectors(head, train))]
    np.testing.assert_allclose(head.training_scores(train), expected, rtol=1e-4)
    np.testing.assert_allclose(head.threshold_, np.quantile(expected, 0.95), rtol=1e-4)
    # Against the whole bank, the training images would score far lower (their patches are in it).
    assert (head.score_samples(train) < head.training_scores(train)).all()
    full = small(coreset_fraction=1.0).fit(train)
    # 0 to float32 rounding of the norm expansion (the vectors weighted up to 8x here).
    assert len(full.bank_) == 5 * 64 and np.allclose(full.patch_scores(train), 0, atol=2e-2)


# --- behaviour ----------------------------------------------------------------------------------

def test_shifted_patches_score_higher_and_are_where_the_map_peaks():
    head = small(coreset_fraction=0.1).fit(maps(10))
    regions = {4: (slice(1, 3), slice(1, 3)), 5: (slice(5, 7), slice(2, 4)), 6: (slice(3, 5), slice(5, 7)),
               7: (slice(0, 2), slice(6, 8))}
    test = maps(8, seed=7, shift=regions)
    scores = head.score_samples(test)
    assert scores[4:].min() > scores[:4].max() and scores[4:].min() > head.threshold_
    anomaly = head.anomaly_maps(test, 32)  # 4 pixels a patch
    assert anomaly.shape == (8, 32, 32) and anomaly.dtype == np.float32
    for image, (rows, columns) in regions.items():
        r, c = np.unravel_index(anomaly[image].argmax(), (32, 32))
        assert rows.start * 4 <= r < rows.stop * 4 and columns.start * 4 <= c < columns.stop * 4, (image, r, c)


def test_save_load_round_trip_gives_the_same_scores(tmp_path):
    head = small().fit(maps(6))
    test = maps(3, seed=1, shift={1: (slice(0, 2), slice(0, 2))})
    path = head.save(tmp_path / "a.head", about={"class_name": "a"})
    torch.load(path, weights_only=True)  # plain tensors and values only
    loaded = PatchCoreHead.load(path)
    assert type(loaded) is PatchCoreHead and loaded.get_params() == head.get_params()
    np.testing.assert_array_equal(loaded.score_samples(test), head.score_samples(test))
    np.testing.assert_array_equal(loaded.anomaly_maps(test, 16), head.anomaly_maps(test, 16))
    np.testing.assert_array_equal(loaded.training_scores(maps(6)), head.training_scores(maps(6)))
    assert loaded.threshold_ == pytest.approx(head.threshold_)
    # A float16 bank: half the file, nearly the same scores.
    half = PatchCoreHead.load(head.save(tmp_path / "b.head", about={"class_name": "a"}, bank_dtype="float16"))
    np.testing.assert_allclose(half.score_samples(test), head.score_samples(test), rtol=1e-2)
    with pytest.raises(PipelineError, match="float32 or float16"):
        head.save(tmp_path / "c.head", about={"class_name": "a"}, bank_dtype="int8")


def test_clone_gives_an_unfitted_head_with_the_same_parameters():
    head = small(layers=(FINE,), reweight_neighbours=0, dim=4).fit(maps(4))
    twin = clone(head)
    assert twin.get_params() == head.get_params() and not twin.fitted() and not hasattr(twin, "bank_")
    assert twin.fit(maps(4)).bank_.shape == head.bank_.shape == (64, 4)  # 4 images x 64 patches x 0.25
    np.testing.assert_array_equal(twin.score_samples(maps(2, 1)), head.score_samples(maps(2, 1)))
    assert small(layers=f"{COARSE},{FINE}").fit(maps(2)).layers_ == [FINE, COARSE]  # as the command line gives it


def test_bad_inputs_are_clear_errors():
    with pytest.raises(PipelineError, match="full-resolution maps"):
        small().fit(Features(np.zeros((4, 3), np.float32)))
    with pytest.raises(PipelineError, match="asked for the maps stride32"):
        small(layers=("stride32",)).fit(maps(3))
    for fraction in (0, 0.0, 1.5, -0.1):
        with pytest.raises(PipelineError, match="coreset_fraction must be a number > 0 and <= 1"):
            small(coreset_fraction=fraction).fit(maps(3))
    with pytest.raises(PipelineError, match="neighbourhood must be odd"):
        small(neighbourhood=2).fit(maps(3))
    with pytest.raises(PipelineError, match="reweight_neighbours 1"):
        small(reweight_neighbours=1).fit(maps(3))
    with pytest.raises(PipelineError, match="fit the PatchCore head"):
        small().score_samples(maps(2))
    head = small(layers=(FINE,)).fit(maps(3))
    other = Features(np.zeros((2, 1)), trunk={FINE: np.zeros((2, 6, 8, 8), np.float16)})
    with pytest.raises(PipelineError, match="fitted on the maps"):
        head.score_samples(other)
    with pytest.raises(PipelineError, match="not on 2"):
        head.training_scores(maps(2))
    with pytest.raises(PipelineError, match="at least 2 images"):
        small(coreset_fraction=1.0).fit(maps(1))
