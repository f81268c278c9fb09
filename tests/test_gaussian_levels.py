"""The multi-level Gaussian (``gaussian --scales multi --combine sum``): one Ledoit-Wolf Gaussian
per level (the pooled vector, each map average-pooled over its grid), the squared Mahalanobis
distances summed, against a plain reference (scikit-learn's LedoitWolf per level and an
explicit inverse); saved heads round-trip, and files saved before ``combine`` still load."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from pipeline.errors import PipelineError
from pipeline.heads.base import Features
from pipeline.heads.gaussian.head import GaussianHead


def levels(seed: int, n: int) -> Features:
    """Correlated pooled vectors (8-d) and two maps (5 and 3 channels on a 2 x 2 grid)."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(8, 8))
    return Features((rng.normal(size=(n, 8)) @ mix).astype(np.float32),
                    {"stride16": rng.normal(1.0, 2.0, size=(n, 5, 2, 2)).astype(np.float16),
                     "stride8": rng.normal(size=(n, 3, 2, 2)).astype(np.float16)})


def level_rows(features: Features) -> list[np.ndarray]:
    """The levels in the head's order: pooled, then the maps by name, each mean-pooled, float64."""
    return [np.asarray(features.pooled, dtype=np.float64),
            *(np.asarray(features.maps[name], dtype=np.float64).mean(axis=(2, 3)) for name in sorted(features.maps))]


def reference(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distances under scikit-learn's Ledoit-Wolf, explicit inverse, row by row."""
    estimate = LedoitWolf().fit(train)
    precision = np.linalg.inv(estimate.covariance_)
    return np.array([float((row - estimate.location_) @ precision @ (row - estimate.location_)) for row in test])


@pytest.mark.parametrize("combine", ["sum", "sum-distances"])
def test_one_gaussian_per_level_summed_is_the_plain_computation(combine):
    train, test = levels(0, 60), levels(1, 12)
    head = GaussianHead(scales="multi", combine=combine).fit(train)
    per_level = [reference(a, b) for a, b in zip(level_rows(train), level_rows(test))]
    expected = np.sum(per_level if combine == "sum" else np.sqrt(per_level), axis=0)
    scores = head.score_samples(test)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected, rtol=1e-8)
    assert [g.layers for g in head.gaussians_] == [("pooled",), ("stride16",), ("stride8",)]
    np.testing.assert_allclose(list(head.level_scores(test).values()), per_level, rtol=1e-8)
    # concatenate: one Gaussian over the levels side by side, as before.
    together = GaussianHead(scales="multi").fit(train)
    np.testing.assert_allclose(together.score_samples(test),
                               reference(np.hstack(level_rows(train)), np.hstack(level_rows(test))), rtol=1e-8)
    assert 0 < together.shrinkage_ < 1 and len(together.gaussians_) == 1


def test_scaling_applies_to_each_level_alone():
    train, test = levels(2, 50), levels(3, 7)
    head = GaussianHead(scales="multi", combine="sum", scaling="l2").fit(train)

    def unit(rows: np.ndarray) -> np.ndarray:
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    expected = sum(reference(unit(a), unit(b)) for a, b in zip(level_rows(train), level_rows(test)))
    np.testing.assert_allclose(head.score_samples(test), expected, rtol=1e-8)


def test_combining_levels_needs_several_levels_and_a_summed_head_has_no_single_mean():
    with pytest.raises(PipelineError, match="needs --scales multi"):
        GaussianHead(combine="sum").fit(np.random.default_rng(0).normal(size=(20, 4)))
    head = GaussianHead(scales="multi", combine="sum").fit(levels(0, 30))
    assert not hasattr(head, "mean_") and not hasattr(GaussianHead(), "mean_")


@pytest.mark.parametrize("combine", ["concatenate", "sum", "sum-distances"])
def test_a_saved_head_round_trips(combine, tmp_path):
    import torch

    train, test = levels(4, 40), levels(5, 9)
    head = GaussianHead(scales="multi", combine=combine, scaling="standardise").fit(train)
    path = head.save(tmp_path / "a.head", about={"class_name": "a"})
    torch.load(path, weights_only=True)  # plain tensors and values only
    loaded = GaussianHead.load(path)
    assert loaded.get_params() == head.get_params() and loaded.layers_ == head.layers_
    np.testing.assert_allclose(loaded.score_samples(test), head.score_samples(test), rtol=1e-12)


def test_a_head_saved_before_combine_existed_loads_as_one_concatenated_gaussian(tmp_path):
    """The file layout before ``combine``: one Gaussian's mean, Cholesky factor, shrinkage and
    scaler, and no ``combine`` key."""
    import torch

    from pipeline.heads.saving import seal

    train, test = levels(6, 40), levels(7, 9)
    head = GaussianHead(scales="multi").fit(train)
    path = head.save(tmp_path / "old.head", about={"class_name": "a"})
    payload = torch.load(path, weights_only=True)
    state = payload["state"]
    del state["combine"]
    assert set(state) == {"scales", "scaling", "layers", "feature_dim", "shrinkage", "mean", "cholesky", "scaler"}
    torch.save(seal(payload), path)
    loaded = GaussianHead.load(path)
    assert loaded.combine == "concatenate"
    np.testing.assert_allclose(loaded.score_samples(test), head.score_samples(test), rtol=1e-12)


def test_the_stage_sums_the_levels_of_a_real_cache(synthetic_cache, tmp_path):
    import json

    from click.testing import CliRunner

    from pipeline.commands.gaussian import main as gaussian

    metrics = tmp_path / "g.json"
    result = CliRunner().invoke(gaussian, ["--cache", str(synthetic_cache.path), "--scales", "multi",
                                           "--combine", "sum", "--metrics", str(metrics)])
    assert result.exit_code == 0, result.output
    about = json.loads(metrics.with_suffix(".about.json").read_text())["about"]
    assert about["combine"] == "sum" and about["layers"] == ["pooled", "stride16"]
    assert about["setting_words"]["combine"] == "one Gaussian per level, squared distances summed"
    result = CliRunner().invoke(gaussian, ["--cache", str(synthetic_cache.path), "--combine", "sum",
                                           "--metrics", str(tmp_path / "h.json")])
    assert result.exit_code != 0 and "needs --scales multi" in result.output
