"""The ensemble over caches of the same images (``stages.ensemble``, ``pipeline.heads.ensemble``):
its metrics against a plain computation (each member fitted by hand on each cache, standardised
by its training scores, summed, roc_auc_score), the caches it refuses, the member settings, and
the head's joined features and saved state."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from pipeline.errors import PipelineError
from pipeline.heads.base import Features
from pipeline.heads.ensemble.head import EnsembleHead, join, member_arguments, split
from pipeline.heads.gaussian.head import GaussianHead
from pipeline.heads.knn.head import KNNHead
from pipeline.store.cache import ArraySpec, FeatureCache

CLASSES = ["a", "b", "c"]
N_TRAIN, N_TEST = 30, 15  # per class


def dataset(digest: str = "d" * 64) -> dict:
    return {"name": "imagefolder", "classes": CLASSES, "n_train": N_TRAIN * 3, "n_test": N_TEST * 3,
            "source": "image folder", "folder": "toy", "content_sha256": digest}


def labels(split: str) -> np.ndarray:
    return np.repeat(np.arange(3), N_TRAIN if split == "train" else N_TEST)


def make_cache(path, backbone: str, dim: int, seed: int, *, data: dict | None = None,
               label_of=labels) -> FeatureCache:
    """A cache of the same toy 'images' (each class a cluster of a shared latent), seen through
    a backbone of its own: a random linear map of the latent plus noise, and a 2 x 2 map."""
    latent_rng = np.random.default_rng(0)  # the images: the same in every cache
    latent = {split: latent_rng.normal(size=(len(labels(split)), 6)) + 1.5 * np.eye(6)[labels(split)]
              for split in ("train", "test")}
    rng = np.random.default_rng(seed)  # the backbone
    mix, noise = rng.normal(size=(6, dim)), 0.3
    meta = {"dataset": data or dataset(), "backbone": {"name": backbone},
            "preprocessing": {"image_size": 32, "resize": "resize", "interpolation": "bilinear",
                              "normalisation": "inception"}}
    specs = [ArraySpec("features", (dim,), "float32"), ArraySpec("labels", (), "int64"),
             ArraySpec("maps/stride16", (3, 2, 2), "float16")]
    cache = FeatureCache.create(path, meta, {"train": specs, "test": specs},
                                {s: len(labels(s)) for s in ("train", "test")}, chunk_rows=16)
    for split in ("train", "test"):
        pooled = (latent[split] @ mix + noise * rng.normal(size=(len(latent[split]), dim))).astype(np.float32)
        maps = (pooled[:, :3, None, None] + rng.normal(size=(len(pooled), 3, 2, 2))).astype(np.float16)
        for chunk, rows in enumerate(cache.chunk_slices(split)):
            cache.write_chunk(split, chunk, {"features": pooled[rows], "labels": label_of(split)[rows],
                                             "maps/stride16": maps[rows]})
    cache.mark_complete()
    return cache


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ensemble")
    return [make_cache(folder / f"{name}.zarr", name, dim, seed)
            for name, dim, seed in (("net0", 10, 1), ("net1", 7, 2), ("net2", 12, 3))]


def run(args: list[str]) -> tuple[int, str]:
    from pipeline.commands.ensemble import main

    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output + (repr(result.exception) if result.exception else "")


def by_hand(caches, member, standardise: str, folds: int = 5) -> dict[str, dict]:
    """Per class: each member fitted on each cache's training rows of the class, standardised by
    the mean and std of its training scores (cross-fitted: fold i mod folds held out), summed;
    the AUROC of the sum and of each member alone."""
    out = {}
    for c, name in enumerate(CLASSES):
        total, alone = 0.0, []
        for cache in caches:
            train = cache.features("train")[cache.labels("train") == c]
            test = cache.features("test")
            fitted = member().fit(train)
            if standardise == "cross-fit":
                reference = np.empty(len(train))
                for fold in range(folds):
                    held = np.arange(fold, len(train), folds)
                    kept = np.setdiff1d(np.arange(len(train)), held)
                    reference[held] = member().fit(train[kept]).score_samples(train[held])
            else:
                reference = fitted.training_scores(train)
            z = (fitted.score_samples(test) - reference.mean()) / reference.std()
            total = total + z
            alone.append(z)
        anomalous = cache.labels("test") != c
        out[name] = {"auroc": roc_auc_score(anomalous, total),
                     "members": [roc_auc_score(anomalous, z) for z in alone]}
    return out


@pytest.mark.parametrize("member,settings,standardise", [
    ("gaussian", [], "cross-fit"),
    ("gaussian", [], "training"),
    ("knn", ["--member-settings", "k=2,device=cpu"], "training"),
])
def test_the_stage_is_the_plain_computation(caches, tmp_path, member, settings, standardise):
    metrics = tmp_path / "e.json"
    code, output = run(["--cache", str(caches[0].path), "--with-cache", str(caches[1].path),
                        "--with-cache", str(caches[2].path), "--member", member, *settings,
                        "--standardise", standardise, "--metrics", str(metrics)])
    assert code == 0, output
    payload = json.loads(metrics.read_text())
    make = (lambda: GaussianHead()) if member == "gaussian" else (lambda: KNNHead(k=2, device="cpu"))
    expected = by_hand(caches, make, standardise)
    for name in CLASSES:
        assert payload["per_class"][name]["auroc"] == pytest.approx(expected[name]["auroc"], abs=2e-6)
        for i in range(3):
            assert payload["controls"][f"member{i}"]["per_class"][name]["auroc"] == pytest.approx(
                expected[name]["members"][i], abs=2e-6)
    about = json.loads(metrics.with_suffix(".about.json").read_text())["about"]
    assert about["head"] == "ensemble" and about["member"] == member and about["standardise"] == standardise
    assert about["backbone"] == "net0+net1+net2" and about["image_size"] == 32
    assert [m["backbone"] for m in about["members"]] == ["net0", "net1", "net2"]
    assert "member0 (net0 @ 32, standardised alone)" in output


def test_a_multi_level_member_reads_each_caches_maps(caches, tmp_path):
    metrics = tmp_path / "m.json"
    code, output = run(["--cache", str(caches[0].path), "--with-cache", str(caches[1].path), "--member", "gaussian",
                        "--member-settings", "scales=multi,combine=sum", "--standardise", "none",
                        "--classes", "a", "--metrics", str(metrics)])
    assert code == 0, output
    total = 0.0
    for cache in caches[:2]:
        def features(split: str, rows=None) -> Features:
            return Features(cache.features(split, rows), {"stride16": cache.read(split, "maps/stride16", rows)})
        rows = np.flatnonzero(cache.labels("train") == 0)
        total = total + GaussianHead(scales="multi", combine="sum").fit(features("train", rows)).score_samples(
            features("test"))
    expected = roc_auc_score(caches[0].labels("test") != 0, total)
    assert json.loads(metrics.read_text())["per_class"]["a"]["auroc"] == pytest.approx(expected, abs=2e-6)


@pytest.mark.parametrize("what", ["digest", "labels", "classes"])
def test_caches_of_other_images_are_refused_before_any_fit(caches, tmp_path, what):
    if what == "digest":
        other = make_cache(tmp_path / "o.zarr", "net9", 5, 9, data=dataset("e" * 64))
        message = "dataset.content_sha256"
    elif what == "classes":
        other = make_cache(tmp_path / "o.zarr", "net9", 5, 9, data={**dataset(), "classes": ["a", "b", "x"]})
        message = "dataset.classes"
    else:
        def swapped(split: str) -> np.ndarray:
            values = labels(split).copy()
            values[[0, -1]] = values[[-1, 0]]
            return values
        other = make_cache(tmp_path / "o.zarr", "net9", 5, 9, label_of=swapped)
        message = "train label of row 0 differs"
    metrics = tmp_path / "x.json"
    code, output = run(["--cache", str(caches[0].path), "--with-cache", str(other.path), "--metrics", str(metrics)])
    assert code != 0 and "not a cache of the same images" in output and message in output, output
    assert "Traceback" not in output and not metrics.exists()


def test_a_renamed_copy_of_the_folder_is_the_same_images(caches, tmp_path):
    other = make_cache(tmp_path / "r.zarr", "net9", 5, 9, data={**dataset(), "folder": "toy-copy"})
    from pipeline.commands.ensemble import same_images

    same_images([caches[0], other])  # the content digest says they are the same files


def test_what_the_stage_does_not_offer_is_refused(caches, tmp_path):
    base = ["--cache", str(caches[0].path), "--with-cache", str(caches[1].path)]
    code, output = run([*base, "--save-heads", str(tmp_path / "heads"), "--metrics", str(tmp_path / "s.json")])
    assert code != 0 and "--save-heads is not offered" in output
    code, output = run([*base, "--with-cache", str(caches[0].path), "--metrics", str(tmp_path / "t.json")])
    assert code != 0 and "given twice" in output
    code, output = run([*base, "--member-settings", "kk=2", "--member", "knn", "--metrics", str(tmp_path / "u.json")])
    assert code != 0 and "no parameter 'kk'" in output
    code, output = run([*base, "--member-settings", "combine=sum", "--metrics", str(tmp_path / "v.json")])
    assert code != 0 and "needs --scales multi" in output


# --- the head alone ---------------------------------------------------------------------------

def toy(seed: int, n: int, dim: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim))


def test_join_and_split_are_inverse_and_plain_features_are_one_member():
    a, b = Features(toy(0, 5, 3), {"stride16": toy(1, 5, 8).reshape(5, 2, 2, 2)}), Features(toy(2, 5, 4))
    parts = split(join([a, b]))
    assert len(parts) == 2 and parts[0].pooled is a.pooled and parts[1].pooled is b.pooled
    assert list(parts[0].maps) == ["stride16"] and not parts[1].maps
    assert split(a)[0] is a
    with pytest.raises(PipelineError, match="same images"):
        join([a, Features(toy(3, 4, 4))])


def test_member_settings_are_checked_as_declared():
    assert member_arguments("gaussian", ["scales=multi", "combine=sum"]) == {"scales": "multi", "combine": "sum"}
    assert member_arguments("knn", ["k=3"]) == {"k": 3}
    for bad, message in ((["k=two"], "k must be an integer"), (["k"], "not KEY=VALUE"), (["k=1", "k=2"], "twice")):
        with pytest.raises(PipelineError, match=message):
            member_arguments("knn", bad)


@pytest.mark.parametrize("standardise", ["cross-fit", "training", "none"])
def test_a_saved_ensemble_scores_as_the_fitted_one(tmp_path, standardise):
    train = join([toy(0, 40, 6), toy(1, 40, 4) + 1])
    test = join([toy(2, 10, 6) * 2, toy(3, 10, 4) * 2 + 1])
    head = EnsembleHead(standardise=standardise, folds=4).fit(train)
    np.testing.assert_allclose(head.threshold_, np.quantile(head.training_scores(train), 0.95))
    if standardise == "none":
        assert all((m.location, m.spread) == (0.0, 1.0) for m in head.members_)
    loaded = EnsembleHead.load(head.save(tmp_path / "e.head", about={"class_name": "a"}))
    assert loaded.get_params() == head.get_params()
    np.testing.assert_allclose(loaded.score_samples(test), head.score_samples(test), rtol=1e-12)
    with pytest.raises(PipelineError, match="fitted on 2 caches"):
        head.score_samples(toy(2, 10, 6))


def test_a_refitted_ensemble_scores_with_its_new_fit():
    """What the head remembers of the rows it scored last is dropped by the next fit."""
    test = join([toy(2, 10, 6), toy(3, 10, 4)])
    head = EnsembleHead(standardise="training")
    first = head.fit(join([toy(0, 40, 6), toy(1, 40, 4)])).score_samples(test)
    second = head.fit(join([toy(4, 40, 6) + 3, toy(5, 40, 4) - 2])).score_samples(test)
    fresh = EnsembleHead(standardise="training").fit(join([toy(4, 40, 6) + 3, toy(5, 40, 4) - 2]))
    np.testing.assert_allclose(second, fresh.score_samples(test))
    assert not np.allclose(first, second)


def test_remembered_scores_are_given_back_only_for_the_very_rows(monkeypatch):
    """fit keeps the cross-fitted training total and score_samples the last rows' member scores,
    each for that array alone: the same array is not computed again, an equal copy is (and
    agrees), other rows get their own scores, and a pickled head carries none of it."""
    import pickle

    rows = [toy(0, 40, 6), toy(1, 40, 4)]
    head = EnsembleHead(standardise="cross-fit", folds=4).fit(join(rows))
    again = head.training_scores(join([r.copy() for r in rows]))  # a copy: cross-fitted again
    monkeypatch.setattr(head, "_cross_fitted", lambda part: pytest.fail("computed again"))
    np.testing.assert_allclose(head.training_scores(join(rows)), again)
    test, other = join([toy(2, 10, 6), toy(3, 10, 4)]), join([toy(4, 10, 6), toy(5, 10, 4)])
    first = head.score_samples(test)
    assert not np.allclose(head.score_samples(other), first)
    np.testing.assert_allclose(head.score_samples(test), head.score_samples(join([test.pooled.copy(),
                                                                                  toy(3, 10, 4)])))
    monkeypatch.undo()
    unpickled = pickle.loads(pickle.dumps(head))
    np.testing.assert_allclose(unpickled.score_samples(test), first)
    np.testing.assert_allclose(unpickled.training_scores(join(rows)), again)
