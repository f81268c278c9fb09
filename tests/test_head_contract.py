"""The head contract (pipeline/heads/base.py), the same for every registered head: sklearn's
clone, fit / score_samples / decision_function / predict with threshold_, calibrate, save/load."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from pipeline.errors import PipelineError
from pipeline.heads.base import Features, Head
from pipeline.heads.registry import HEADS, head_class

# Fast settings per head, on 16-d toy features; device cpu (the default is auto) where a head has
# one: load() puts a head on the device it is asked for, cpu by default.
SMALL = {
    "knn": dict(k=2, device="cpu"),
    "plume": dict(epochs=2, dim="native", lr=1e-3, batch_size=16, device="cpu"),
    "anomem": dict(epochs=2, scales="last", slots_last=4, proj_dim=4, proj_hidden=8, batch_size=32, device="cpu"),
    "igd": dict(epochs=2, hidden=16, latent_dim=4, batch_size=16, lr=1e-3, device="cpu"),
    "gaussian": dict(),
    "classical": dict(detector="ocsvm"),
    # The tail of EfficientNet-Lite0 (its pip-installed weights) on 32 px trunk maps (40 x 4 x 4).
    "panda": dict(image_size=32, epochs=2, batch_size=16, device="cpu"),
    # The patch heads on the 40 x 4 x 4 trunk maps: 16 patches per image.
    "patchcore": dict(device="cpu"),
    "padim": dict(channels=8),
    # One member (plain features are one cache's): a Gaussian, standardised on cross-fitted scores.
    "ensemble": dict(folds=3),
}


def toy(n: int, seed: int = 0, offset: float = 0.0) -> Features:
    rng = np.random.default_rng(seed)
    pooled = (rng.normal(size=(n, 16)) + offset).astype(np.float32)
    views = np.stack([pooled + rng.normal(0, 0.05, pooled.shape).astype(np.float32) for _ in range(2)], axis=1)
    trunk = (rng.normal(size=(n, 40, 4, 4)) + offset).astype(np.float16)
    return Features(pooled, {}, {"pooled": views}, {"stride8": trunk})


def joined(*parts: Features) -> Features:
    """The rows of several toy feature sets, as a mapping (the form scoring new images uses)."""
    return Features.of({"pooled": np.concatenate([p.pooled for p in parts]),
                        "trunk/stride8": np.concatenate([p.trunk["stride8"] for p in parts])})


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_follows_the_contract(name, tmp_path):
    cls = head_class(name)
    assert issubclass(cls, Head) and cls.name == name
    head = cls(**SMALL[name])
    twin = clone(head)
    assert twin is not head and twin.get_params() == head.get_params() and not twin.fitted()
    train, test = toy(64), joined(toy(20, 1), toy(20, 2, 6.0))
    head.fit(train)
    scores = head.score_samples(test)
    assert scores.dtype == np.float64 and scores.shape == (40,)
    np.testing.assert_array_equal(head.decision_function(test), scores)
    # threshold_: the 0.95 quantile of the head's own training scores; predict flags above it.
    np.testing.assert_allclose(head.threshold_, np.quantile(head.training_scores(train), 0.95))
    np.testing.assert_array_equal(head.predict(test), (scores > head.threshold_).astype(int))
    assert scores[20:].mean() > scores[:20].mean()  # the shifted half is more anomalous
    # Re-chosen on held-out normal features.
    held_out = toy(30, 3)
    head.calibrate(held_out, 0.9)
    assert head.threshold_ == pytest.approx(np.quantile(head.score_samples(held_out), 0.9))
    # One file format for all heads; the loaded head scores the same.
    path = head.save(tmp_path / f"{name}.head", about={"class_name": "a"}, **({"gallery_dtype": "float32"}
                                                                             if name == "knn" else {}))
    loaded = cls.load(path)
    assert type(loaded) is cls and loaded.get_params() == head.get_params()
    np.testing.assert_allclose(loaded.score_samples(test), scores, rtol=1e-6)
    # A clone of a fitted head is unfitted, and set_params changes one parameter.
    other = clone(head).set_params(threshold_quantile=0.5)
    assert not other.fitted() and other.threshold_quantile == 0.5


def test_no_threshold_means_predict_explains_itself():
    head = head_class("knn")(k=2, threshold_quantile=None).fit(toy(10).pooled)
    assert head.threshold_ is None
    with pytest.raises(PipelineError, match="no threshold"):
        head.predict(toy(3).pooled)


def test_one_class_heads_refuse_labelled_anomalies():
    with pytest.raises(PipelineError, match="one-class"):
        head_class("knn")(k=2).fit(toy(10), labels=np.r_[np.zeros(9), 1])


def test_the_semi_supervised_threshold_comes_from_the_normal_rows_only():
    labels = np.r_[np.zeros(60, int), np.ones(4, int)]
    train = toy(64)
    head = head_class("anomem")(**SMALL["anomem"], sup_epochs=2).fit(train, labels)
    np.testing.assert_allclose(head.threshold_, np.quantile(head.training_scores(train)[:60], 0.95))


@pytest.mark.parametrize("page,after", [("README.md", "## From Python"), ("docs/python.md", "# From Python")])
def test_the_readme_from_python_example_runs(page, after, synthetic_cache, tmp_path, monkeypatch):
    """The notebook example of the README and of the docs, on the synthetic cache."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / page).read_text()
    code = text.split(after, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("cache/digits_efficientnet_lite0_224.zarr", str(synthetic_cache.path))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, page, "exec"), namespace)
    np.testing.assert_array_equal(namespace["flags"], (namespace["scores"] > namespace["head"].threshold_))
    assert namespace["wider"].k == 5 and (tmp_path / "heads" / "zero.head").is_file()
