"""The PaDiM head (pipeline/heads/padim) against plain reference computations: an explicit loop
over grid positions with np.cov and np.linalg.inv, scikit-learn's LedoitWolf per position; its
channel draw, a synthetic localisation, save/load, clone and its refusals. Small arrays only:
two maps of 8 channels at 8 x 8 and 16 channels at 4 x 4."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import clone
from sklearn.covariance import LedoitWolf

from pipeline.declare import specs
from pipeline.errors import PipelineError
from pipeline.heads.base import Features
from pipeline.heads.padim.head import PadimHead
from pipeline.heads.padim.model import choose_channels, ledoit_wolf_covariance, position_means, position_scatter
from pipeline.heads.padim.settings import PadimParams


def maps(n: int, seed: int = 0, fine: int = 8, coarse: int = 4, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Two float16 maps as the cache stores them: 8 channels at fine x fine, 16 at coarse x coarse,
    with channels correlated (a shared component) so that the covariances are not diagonal."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n, 1, fine, fine))
    a = rng.normal(size=(n, 8, fine, fine)) + 0.6 * shared + np.linspace(-1, 1, 8)[None, :, None, None]
    b = rng.normal(size=(n, 16, coarse, coarse)) * np.linspace(0.5, 2, 16)[None, :, None, None]
    return {"stride8": (scale * a).astype(np.float16), "stride16": (scale * b).astype(np.float16)}


def features(trunk: dict[str, np.ndarray]) -> Features:
    n = len(next(iter(trunk.values())))
    return Features(np.zeros((n, 4), np.float32), trunk=trunk)


def reference_embeddings(trunk: dict[str, np.ndarray], index: np.ndarray) -> np.ndarray:
    """(N, H, W, d) float64: the coarse map upsampled bilinearly (half-pixel centres) to the fine
    grid, concatenated after the fine one, the chosen channels."""
    fine = torch.as_tensor(trunk["stride8"].astype(np.float32))
    coarse = F.interpolate(torch.as_tensor(trunk["stride16"].astype(np.float32)), size=fine.shape[-2:],
                           mode="bilinear", align_corners=False)
    joined = torch.cat([fine, coarse], dim=1).numpy().astype(np.float64)[:, index]
    return joined.transpose(0, 2, 3, 1)


def reference_distances(train: np.ndarray, test: np.ndarray, epsilon: float) -> np.ndarray:
    """An explicit loop over positions: np.cov (N - 1, as the paper's code) + epsilon I, its
    inverse by np.linalg.inv, the distance sqrt(d^T S^-1 d)."""
    n, height, width, dims = test.shape
    out = np.empty((n, height, width))
    for i in range(height):
        for j in range(width):
            rows = train[:, i, j]
            mean = rows.mean(axis=0)
            inverse = np.linalg.inv(np.cov(rows, rowvar=False) + epsilon * np.eye(dims))
            for k in range(n):
                delta = test[k, i, j] - mean
                out[k, i, j] = np.sqrt(delta @ inverse @ delta)
    return out


def test_the_distance_grid_is_the_per_position_mahalanobis_distance_of_a_plain_loop():
    train, test = maps(40, 0), maps(6, 1)
    head = PadimHead(channels=12, epsilon=0.01, seed=3).fit(features(train))
    assert head.channels_used_ == 12 and head.grid_ == (8, 8) and head.layers_ == ["stride8", "stride16"]
    expected = reference_distances(reference_embeddings(train, head.channel_index_),
                                   reference_embeddings(test, head.channel_index_), 0.01)
    grids = head.distance_grids(features(test))
    assert grids.shape == (6, 8, 8) and grids.dtype == np.float64
    np.testing.assert_allclose(grids, expected, rtol=1e-9)
    # The image score is the grid's maximum (before upsampling and smoothing).
    scores = head.score_samples(features(test))
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected.reshape(6, -1).max(axis=1), rtol=1e-9)
    # Small blocks of images (row_blocks) change nothing.
    head._block_size = lambda: 2
    np.testing.assert_allclose(head.distance_grids(features(test)), grids, rtol=1e-12)


def test_the_means_and_covariances_are_exact_for_features_far_from_zero():
    """Two passes (mean, then centred sums): no cancellation when means dwarf the spread."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(5, 30, 3)) * 1e-3 + 1e4  # (P, N, d)
    blocks = [torch.as_tensor(rows[:, :13]), torch.as_tensor(rows[:, 13:])]
    mean, count = position_means(blocks)
    scatter, _ = position_scatter(blocks, mean)
    for p in range(5):
        np.testing.assert_allclose(scatter[p].numpy() / (count - 1), np.cov(rows[p], rowvar=False), rtol=1e-6)


@pytest.mark.parametrize("count,epsilon", [(12, 0.0), (40, 0.0), (40, 0.01)])
def test_ledoit_wolf_is_scikit_learns_at_every_position(count, epsilon):
    """Fewer images than channels (12 < 16: strong shrinkage) and more; epsilon 0 is sklearn's exactly."""
    train = {"stride16": maps(count, 2)["stride16"]}
    head = PadimHead(channels="all", covariance="ledoit_wolf", epsilon=epsilon).fit(features(train))
    rows = train["stride16"].astype(np.float64).transpose(0, 2, 3, 1).reshape(count, 16, 16)  # (N, P, d)
    precision = (head.whitening_.transpose(1, 2) @ head.whitening_).numpy()  # W^T W, W = L^-1
    for p in range(16):
        estimate = LedoitWolf().fit(rows[:, p])
        expected = estimate.covariance_ + epsilon * np.eye(16)
        np.testing.assert_allclose(np.linalg.inv(precision[p]), expected, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(precision[p], np.linalg.inv(expected), rtol=1e-9, atol=1e-12)
        assert head.shrinkage_[p].item() == pytest.approx(estimate.shrinkage_, rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(head.mean_[p].numpy(), estimate.location_, rtol=1e-12)
    assert 0 < head.shrinkage_.min() <= head.shrinkage_.max() <= 1


def test_ledoit_wolf_with_one_channel_does_not_shrink():
    rows = torch.as_tensor(np.random.default_rng(1).normal(size=(3, 20, 1)))
    mean, count = position_means([rows])
    scatter, fourth = position_scatter([rows], mean)
    covariance, shrinkage = ledoit_wolf_covariance(scatter, fourth, count, 0.0)
    assert (shrinkage == 0).all()
    np.testing.assert_allclose(covariance[:, 0, 0].numpy(), rows.numpy()[..., 0].var(axis=1), rtol=1e-12)


def test_the_channel_draw_is_fixed_by_the_seed_and_clamped_to_the_channels_there_are():
    train = features(maps(10))
    first = PadimHead(channels=10, seed=0).fit(train).channel_index_
    again = PadimHead(channels=10, seed=0).fit(train).channel_index_
    other = PadimHead(channels=10, seed=1).fit(train).channel_index_
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert len(first) == 10 and len(set(first)) == 10 and list(first) == sorted(first) and first.max() < 24
    np.testing.assert_array_equal(choose_channels(24, 10, 0), first)
    # "all", or more channels than the maps have (8 + 16): all of them, in order.
    for channels in ("all", 24, 100):
        head = PadimHead(channels=channels, epsilon=0.1).fit(train)
        np.testing.assert_array_equal(head.channel_index_, np.arange(24))
        assert head.channels_used_ == 24 and head.channels_available_ == 24


def test_shifted_patches_score_higher_and_the_maps_peak_where_they_are():
    rng = np.random.default_rng(5)
    train = maps(60, 10)
    normal, shifted = maps(10, 11), maps(10, 12)
    where = []
    for k in range(10):
        i, j = rng.integers(0, 7, size=2)
        # Against the channels' shared component (along it the normal maps vary most).
        shifted["stride8"][k, :, i:i + 2, j:j + 2] += np.resize([6.0, -6.0], 8).astype(np.float16)[:, None, None]
        where.append((i, j))
    head = PadimHead(channels=16, seed=0).fit(features(train))
    test = features({name: np.concatenate([normal[name], shifted[name]]) for name in normal})
    scores = head.score_samples(test)
    assert scores[10:].min() > scores[:10].max()
    grids = head.distance_grids(test)[10:]
    size = 32  # 4 pixels per patch
    anomaly = head.anomaly_maps(test, size)
    assert anomaly.shape == (20, size, size) and anomaly.dtype == np.float32
    # Upsampling and smoothing never raise a value above the image's score (the grid's maximum).
    assert (anomaly.reshape(20, -1).max(axis=1) <= scores + 1e-5).all()
    for k, (i, j) in enumerate(where):
        gi, gj = np.unravel_index(grids[k].argmax(), grids[k].shape)
        assert i <= gi < i + 2 and j <= gj < j + 2
        mi, mj = np.unravel_index(anomaly[10 + k].argmax(), (size, size))
        assert 4 * i <= mi < 4 * (i + 2) and 4 * j <= mj < 4 * (j + 2)


def test_a_saved_head_loads_and_scores_the_same(tmp_path):
    train, test = features(maps(30)), features(maps(5, 1))
    for covariance in ("regularised", "ledoit_wolf"):
        head = PadimHead(channels=12, covariance=covariance, seed=4, layers=("stride16", "stride8")).fit(train)
        path = head.save(tmp_path / f"{covariance}.head", about={"class_name": "a"})
        loaded = PadimHead.load(path)
        assert type(loaded) is PadimHead and loaded.get_params() == head.get_params()
        assert loaded.layers_ == ["stride8", "stride16"] and loaded.threshold_ == pytest.approx(head.threshold_)
        np.testing.assert_array_equal(loaded.channel_index_, head.channel_index_)
        np.testing.assert_array_equal(loaded.score_samples(test), head.score_samples(test))
        np.testing.assert_array_equal(loaded.anomaly_maps(test, 16), head.anomaly_maps(test, 16))


def test_the_head_follows_the_contract():
    head = PadimHead(channels=8, threshold_quantile=0.9)
    twin = clone(head)
    assert twin is not head and twin.get_params() == head.get_params() and not twin.fitted()
    assert PadimHead.localises and PadimHead.needs_trunk and PadimHead.name == "padim"
    train = features(maps(30))
    head.fit(train)
    np.testing.assert_allclose(head.threshold_, np.quantile(head.training_scores(train), 0.9))
    test = Features.of({"pooled": np.zeros((8, 4)), **{f"trunk/{k}": v for k, v in maps(8, 1, scale=3.0).items()}})
    scores = head.score_samples(test)
    np.testing.assert_array_equal(head.predict(test), (scores > head.threshold_).astype(int))
    assert not clone(head).fitted() and clone(head).set_params(epsilon=0.5).epsilon == 0.5
    # The declared parameters: help for each, the paper's preset valid.
    assert all(len(spec.help) > 10 for spec in specs(PadimParams).values())
    paper = PadimHead.preset("paper")
    paper._check_params()
    assert (paper.channels, paper.covariance, paper.epsilon) == (100, "regularised", 0.01)
    assert PadimHead().layers is None and specs(PadimParams)["layers"].parse("none", "layers") is None
    assert specs(PadimParams)["channels"].parse("all", "channels") == "all"


def test_refusals():
    train = maps(10)
    with pytest.raises(PipelineError, match="at least 2 training images"):
        PadimHead().fit(features(maps(1)))
    with pytest.raises(PipelineError, match="full-resolution maps"):
        PadimHead().fit(np.zeros((5, 4)))
    with pytest.raises(PipelineError, match="stride4"):
        PadimHead(layers=("stride4",)).fit(features(train))
    with pytest.raises(PipelineError, match="channels"):
        PadimHead(channels=0).fit(features(train))
    with pytest.raises(PipelineError, match="channels"):
        PadimHead(channels="some").fit(features(train))
    with pytest.raises(PipelineError, match="covariance"):
        PadimHead(covariance="diagonal").fit(features(train))
    with pytest.raises(PipelineError, match="epsilon"):
        PadimHead(epsilon=-1.0).fit(features(train))
    with pytest.raises(PipelineError, match="fit the padim head"):
        PadimHead().score_samples(features(train))
    with pytest.raises(PipelineError, match="not positive definite"):  # 10 images, 24 channels, nothing added
        PadimHead(channels="all", epsilon=0.0).fit(features(train))
    head = PadimHead(channels=8).fit(features(train))
    with pytest.raises(PipelineError, match="8 x 8 grid; these are 8 channels on 6 x 6"):
        head.score_samples(features(maps(3, fine=6, coarse=3)))
    with pytest.raises(PipelineError, match="stride16"):
        head.score_samples(features({"stride8": train["stride8"]}))
    with pytest.raises(PipelineError, match="different numbers of images"):
        head.score_samples(features({"stride8": train["stride8"], "stride16": train["stride16"][:4]}))
    with pytest.raises(PipelineError, match="size"):
        head.anomaly_maps(features(train), 0)


def test_training_scores_are_each_fold_scored_by_a_head_fitted_on_the_others():
    train = features(maps(23, 5))
    head = PadimHead(channels=10, seed=2).fit(train)
    expected = np.empty(23)
    for held in np.array_split(np.arange(23), 5):  # a plain loop over the folds
        rest = np.setdiff1d(np.arange(23), held)
        other = PadimHead(channels=10, seed=2, threshold_quantile=None).fit(
            features({k: v[rest] for k, v in train.trunk.items()}))
        expected[held] = other.score_samples(features({k: v[held] for k, v in train.trunk.items()}))
    np.testing.assert_allclose(head.training_scores(train), expected, rtol=1e-12)
    # Out of sample: they run above the in-sample scores, as new normal images' do.
    assert np.median(expected) > np.median(head.score_samples(train))
    # Below 4 images there are no two folds of 2: the in-sample scores.
    small = features(maps(3, 6))
    tiny = PadimHead(channels=4).fit(small)
    np.testing.assert_array_equal(tiny.training_scores(small), tiny.score_samples(small))
