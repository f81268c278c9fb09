"""The gaussian head (Mahalanobis under Ledoit-Wolf) and the classical detectors (scikit-learn's
OC-SVM, Isolation Forest, LOF and PyOD's detectors by name): their maths against plain
reference computations, that they find points off a normal subspace, determinism, saved
heads, the PyOD errors, and the stages' metrics and report rows."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.base import clone
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from pipeline.errors import PipelineError
from pipeline.heads.base import Features
from pipeline.heads.classical import detectors
from pipeline.heads.classical.head import ClassicalHead
from pipeline.heads.gaussian.head import GaussianHead

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # PyOD's skewness of near-constant columns

DETECTORS = ["ocsvm", "iforest", "lof", "pyod:ECOD", "pyod:COPOD", "pyod:HBOS"]


def subspace(seed: int = 0, n_train: int = 200, n_test: int = 100, dim: int = 16, rank: int = 3,
             offset: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normal rows near a random 3-d subspace of R^16 (noise 0.05); anomalies pushed off it by
    ``offset`` in a random direction orthogonal to it. (train, test, test is_anomaly)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    inside, outside = basis[:, :rank], basis[:, rank:]

    def normal(n: int) -> np.ndarray:
        return rng.normal(size=(n, rank)) @ inside.T + 0.05 * rng.normal(size=(n, dim))

    push = rng.normal(size=(n_test, dim - rank))
    push *= offset / np.linalg.norm(push, axis=1, keepdims=True)
    test = np.concatenate([normal(n_test), normal(n_test) + push @ outside.T])
    return normal(n_train), test, np.r_[np.zeros(n_test), np.ones(n_test)]


def make_head(name: str, **settings):
    return GaussianHead(**settings) if name == "gaussian" else ClassicalHead(detector=name, **settings)


# --- the Gaussian's maths -----------------------------------------------------------------------

def reference_mahalanobis(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Plain NumPy: the explicit inverse of scikit-learn's Ledoit-Wolf covariance, one row at a time."""
    estimate = LedoitWolf().fit(np.asarray(train, dtype=np.float64))
    precision = np.linalg.inv(estimate.covariance_)
    scores = []
    for row in np.asarray(test, dtype=np.float64):
        centred = row - estimate.location_
        scores.append(float(centred @ precision @ centred))
    return np.array(scores)


def test_gaussian_scores_are_the_squared_mahalanobis_distance_under_ledoit_wolf():
    rng = np.random.default_rng(0)
    train = (rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12))).astype(np.float32)  # correlated, n > d
    test = rng.normal(size=(15, 12)).astype(np.float32) * 3
    head = GaussianHead().fit(train)
    scores = head.score_samples(test)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, reference_mahalanobis(train, test), rtol=1e-8)
    # Fewer rows than dimensions (digits: ~90 rows of 1280): the shrunk covariance is still invertible.
    wide_train, wide_test = rng.normal(size=(10, 30)), rng.normal(size=(5, 30))
    np.testing.assert_allclose(GaussianHead().fit(wide_train).score_samples(wide_test),
                               reference_mahalanobis(wide_train, wide_test), rtol=1e-7)
    assert 0 < head.shrinkage_ < 1


def test_multi_layer_gaussian_concatenates_the_pooled_vector_and_each_map_averaged_over_its_grid():
    rng = np.random.default_rng(1)
    train = Features(rng.normal(size=(50, 6)), {"stride16": rng.normal(size=(50, 4, 2, 2)),
                                                 "a_map": rng.normal(size=(50, 3, 2, 2))})
    test = Features(rng.normal(size=(9, 6)), {"stride16": rng.normal(size=(9, 4, 2, 2)),
                                               "a_map": rng.normal(size=(9, 3, 2, 2))})

    def vectors(f: Features) -> np.ndarray:  # pooled, then the maps in name order, each mean-pooled
        return np.concatenate([f.pooled, f.maps["a_map"].mean(axis=(2, 3)), f.maps["stride16"].mean(axis=(2, 3))], 1)

    head = GaussianHead(scales="multi")
    assert head.needs_maps and not GaussianHead(scales="last").needs_maps
    np.testing.assert_allclose(head.fit(train).score_samples(test), reference_mahalanobis(vectors(train), vectors(test)),
                               rtol=1e-8)
    with pytest.raises(PipelineError, match="intermediate maps"):
        GaussianHead(scales="multi").fit(rng.normal(size=(20, 6)))
    with pytest.raises(PipelineError, match="lack"):
        head.score_samples(Features(test.pooled, {"stride16": test.maps["stride16"]}))


@pytest.mark.parametrize("scaling", ["standardise", "l2", "sqrt"])
def test_scaling_is_fitted_on_the_training_rows_and_applied_before_the_gaussian(scaling):
    rng = np.random.default_rng(2)
    train, test = rng.normal(size=(60, 5)) * [1, 10, 100, 0.1, 1] + 3, rng.normal(size=(7, 5)) * 20
    if scaling == "standardise":
        mean, std = train.mean(0), train.std(0)
        scale = lambda rows: (rows - mean) / std  # noqa: E731
    elif scaling == "l2":
        scale = lambda rows: rows / np.linalg.norm(rows, axis=1, keepdims=True)  # noqa: E731
    else:  # a plain loop over the values: the signed square root
        scale = lambda rows: np.array([[math.copysign(math.sqrt(abs(v)), v) for v in row] for row in rows])  # noqa: E731
    np.testing.assert_allclose(GaussianHead(scaling=scaling).fit(train).score_samples(test),
                               reference_mahalanobis(scale(train), scale(test)), rtol=1e-8)


# --- every detector -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gaussian", *DETECTORS])
def test_every_detector_finds_points_off_a_normal_subspace(name):
    train, test, is_anomaly = subspace()
    scores = make_head(name).fit(train).score_samples(test)
    assert scores.dtype == np.float64 and np.isfinite(scores).all()
    assert roc_auc_score(is_anomaly, scores) > 0.9


@pytest.mark.parametrize("name", ["gaussian", *DETECTORS])
def test_clone_and_fit_give_identical_scores(name):
    train, test, _ = subspace(seed=3)
    head = make_head(name).fit(train)
    twin = clone(head)
    assert not twin.fitted() and twin.get_params() == head.get_params()
    np.testing.assert_array_equal(twin.fit(train).score_samples(test), head.score_samples(test))


def test_isolation_forest_depends_on_the_seed_it_is_given_and_on_nothing_else():
    train, test, _ = subspace(seed=4)
    first = ClassicalHead(detector="iforest", seed=1).fit(train).score_samples(test)
    np.testing.assert_array_equal(ClassicalHead(detector="iforest", seed=1).fit(train).score_samples(test), first)
    assert not np.array_equal(ClassicalHead(detector="iforest", seed=2).fit(train).score_samples(test), first)
    assert detectors.is_random("iforest") and not detectors.is_random("ocsvm") and not detectors.is_random("lof")
    assert ClassicalHead(detector="iforest", seed=7).estimator().random_state == 7


def test_scores_are_higher_for_anomalies_as_scikit_learn_scores_them_lower():
    """The sign flip: the head's scores are minus scikit-learn's score_samples (LOF: the LOF itself)."""
    train, test, _ = subspace(seed=5)
    for name in ("ocsvm", "iforest", "lof"):
        head = ClassicalHead(detector=name).fit(train)
        np.testing.assert_allclose(head.score_samples(test), -head.estimator_.score_samples(test))
    lof = ClassicalHead(detector="lof").fit(train)
    # Training scores: each training row's LOF among the others, not scored against itself.
    np.testing.assert_allclose(lof.training_scores(train), -lof.estimator_.negative_outlier_factor_)


@pytest.mark.parametrize("name", ["ECOD", "COPOD"])
def test_ecod_and_copod_score_each_row_as_pyod_scores_it_alone_unless_asked_for_joint_scoring(name):
    cls = detectors.pyod_class(name)
    train, test, _ = subspace(seed=6, n_train=80, n_test=15)
    head = ClassicalHead(detector=f"pyod:{name}").fit(train)
    assert head.batch_dependent_
    alone = np.array([cls().fit(train).decision_function(test[i:i + 1])[0] for i in range(len(test))])
    np.testing.assert_allclose(head.score_samples(test), alone, rtol=1e-10)
    joint = ClassicalHead(detector=f"pyod:{name}", scoring="joint").fit(train)
    np.testing.assert_allclose(joint.score_samples(test), cls().fit(train).decision_function(test), rtol=1e-12)
    assert not np.allclose(joint.score_samples(test), alone)  # the difference the option is about


def test_other_detectors_scores_do_not_depend_on_the_batch():
    train, test, _ = subspace(seed=7)
    for name in ("ocsvm", "iforest", "lof", "pyod:HBOS"):
        head = ClassicalHead(detector=name).fit(train)
        assert not head.batch_dependent_
        np.testing.assert_allclose(head.score_samples(test[:5]), head.score_samples(test)[:5], rtol=1e-12)


def test_settings_reach_the_estimator_and_unknown_ones_are_refused_naming_the_accepted():
    assert ClassicalHead(detector="ocsvm", nu=0.2, gamma="0.5").estimator().get_params()["gamma"] == 0.5
    assert ClassicalHead(detector="lof", n_neighbors=7).estimator().get_params()["novelty"] is True
    assert ClassicalHead(detector="pyod:HBOS", options={"n_bins": 7}).estimator().n_bins == 7
    with pytest.raises(PipelineError, match="n_bins"):
        ClassicalHead(detector="pyod:HBOS", options={"bins": 7}).estimator()
    with pytest.raises(PipelineError, match="gamma must be"):
        ClassicalHead(detector="ocsvm", gamma="wide").fit(subspace()[0])


def test_detector_names_and_their_file_spelling():
    assert detectors.canonical("pyod-ECOD") == detectors.canonical("pyod:ECOD") == "pyod:ECOD"
    assert detectors.file_name("pyod:ECOD") == "pyod-ECOD" and detectors.file_name("lof") == "lof"
    with pytest.raises(PipelineError, match="ocsvm, iforest, lof or pyod:<Name>"):
        detectors.canonical("svm")


# --- PyOD's two errors ------------------------------------------------------------------------

def test_a_missing_pyod_is_named_as_the_optional_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyod", None)  # import pyod now raises ImportError
    monkeypatch.setitem(sys.modules, "pyod.models", None)
    with pytest.raises(PipelineError, match=r"optional extra of this project: pip install -e '\.\[pyod\]'"):
        ClassicalHead(detector="pyod:ECOD").fit(subspace()[0])
    # scikit-learn's detectors do not need it.
    ClassicalHead(detector="ocsvm").fit(subspace()[0])


def test_an_unknown_pyod_detector_is_refused_naming_the_available_ones():
    with pytest.raises(PipelineError) as error:
        ClassicalHead(detector="pyod:ECODE").fit(subspace()[0])
    message = str(error.value)
    assert "no detector 'ECODE'" in message and "Did you mean pyod:ECOD" in message
    listed = message.split("Its detectors: ", 1)[1]
    for name in ("COPOD", "ECOD", "HBOS", "IForest", "KNN", "LOF", "OCSVM"):
        assert name in listed.rstrip(".").split(", ")
    assert "DOMINANT" not in listed  # graph detectors take no feature vectors


# --- saved heads --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gaussian", *DETECTORS])
def test_a_saved_head_scores_as_the_fitted_one_with_no_pickle(name, tmp_path):
    import torch

    train, test, _ = subspace(seed=8)
    head = make_head(name, scaling="standardise").fit(train.astype(np.float32))
    path = head.save(tmp_path / "a.head", about={"class_name": "a"})
    torch.load(path, weights_only=True)  # plain tensors and values only
    loaded = type(head).load(path)
    assert loaded.get_params() == head.get_params()
    np.testing.assert_allclose(loaded.score_samples(test), head.score_samples(test), rtol=1e-12)


def test_a_classical_head_that_refits_differently_is_refused(tmp_path):
    import torch

    from pipeline.heads.saving import read_head_file, seal

    train = subspace(seed=9)[0].astype(np.float32)
    path = ClassicalHead(detector="ocsvm").fit(train).save(tmp_path / "a.head", about={"class_name": "a"})
    payload = torch.load(path, weights_only=True)
    payload["state"]["check_scores"] = payload["state"]["check_scores"] * 1.01  # as if another version fitted it
    payload["state"]["library"] = "scikit-learn 0.1"
    torch.save(seal(payload), path)  # re-sealed: an edit the checksum does not catch
    with pytest.raises(PipelineError, match="does not score them as it did when saved.*scikit-learn 0.1"):
        read_head_file(path, lambda kind: ClassicalHead)


# --- the stages and the report ------------------------------------------------------------------

def test_the_stages_write_metrics_the_report_names_by_detector(synthetic_cache, tmp_path):
    from pipeline.commands.classical import main as classical
    from pipeline.commands.gaussian import main as gaussian
    from pipeline.report.command import main as report

    cache = str(synthetic_cache.path)
    metrics = tmp_path / "metrics"
    runs = [(gaussian, ["--scales", "multi"], "gaussian_x"),
            (classical, ["--detector", "iforest", "--seeds", "2"], "classical_iforest_x"),
            (classical, ["--detector", "pyod-ECOD", "--save-heads", str(tmp_path / "heads")], "classical_pyod-ECOD_x")]
    for command, args, name in runs:
        result = CliRunner().invoke(command, ["--cache", cache, "--metrics", str(metrics / f"{name}.json"),
                                              "--plots", str(tmp_path / "plots" / name), *args])
        assert result.exit_code == 0, result.output
    about = json.loads((metrics / "classical_pyod-ECOD_x.about.json").read_text())["about"]
    assert about["detector"] == "pyod:ECOD" and about["scoring"] == "alone" and about["library"].startswith("PyOD")
    iforest = json.loads((metrics / "classical_iforest_x.json").read_text())
    assert "auroc_std" in iforest["mean"] and {"aupr", "fpr_at_95_tpr"} <= set(iforest["mean"])
    gaussian_about = json.loads((metrics / "gaussian_x.about.json").read_text())["about"]
    assert gaussian_about["scales"] == "multi" and len(gaussian_about["layers"]) == 2
    assert len(list((tmp_path / "heads").glob("*.head"))) == len(synthetic_cache.classes)
    result = CliRunner().invoke(report, ["build", str(metrics), "--out-md", str(tmp_path / "r.md"),
                                         "--out-html", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "r.md").read_text()
    heads = [line.split(" | ")[0].lstrip("| ") for line in markdown.splitlines() if line.startswith("| ")]
    assert {"Gaussian (Mahalanobis)", "Isolation Forest", "ECOD (PyOD)"} <= set(heads)
    assert "each test image scored alone" in markdown and "FPR@95%TPR" in markdown
    assert "ECOD (PyOD)" in (tmp_path / "r.html").read_text()


def test_a_deterministic_detector_runs_one_seed_and_an_unknown_one_stops_before_any_work(synthetic_cache, tmp_path):
    from pipeline.commands.classical import main as classical

    result = CliRunner().invoke(classical, ["--cache", str(synthetic_cache.path), "--detector", "lof", "--seeds", "3",
                                            "--metrics", str(tmp_path / "lof.json")])
    assert result.exit_code == 0 and "deterministic" in result.output
    assert json.loads((tmp_path / "lof.about.json").read_text())["about"]["seeds"] == 1
    result = CliRunner().invoke(classical, ["--cache", str(synthetic_cache.path), "--detector", "pyod:Nope",
                                            "--metrics", str(tmp_path / "nope.json")])
    assert result.exit_code != 0 and "no detector 'Nope'" in result.output
    assert not (tmp_path / "nope.json").exists()
