"""AnoMem: the maths against plain reference computations, the views cache, the head, the stage."""

from __future__ import annotations

import json
import os
import math
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.cluster import KMeans
from sklearn.metrics import roc_auc_score

from pipeline.store.cache import FeatureCache
from pipeline.extract.datasets import load_dataset
from pipeline import metrics_file
from pipeline.errors import PipelineError
from pipeline.evaluate import evaluate_one_vs_all, read_data
from pipeline.protocol import draw_anomalies
from pipeline.heads.anomem.head import AnoMemHead, positions
from pipeline.heads.base import Features


def bundle(train: dict, views: dict) -> Features:
    """Features by scale and their views, as the head contract takes them."""
    return Features(train["pooled"], {k: v for k, v in train.items() if k != "pooled"}, views)
from pipeline.heads.anomem.model import (HopfieldMemory, Projection, ScaleClassifier, double_hinge, memorise,
                                         nt_xent, variance_loss)
from pipeline.extract.views import Augmentation, extract_views
from pipeline.store.views import open_views, views_path

# --- the maths ---------------------------------------------------------------------------


def test_hopfield_retrieval_is_the_softmax_update_of_eq_1():
    torch.manual_seed(0)
    memory = HopfieldMemory(slots=7, dim=5, beta=2.0, steps=2).double()
    xi = torch.randn(3, 5, dtype=torch.float64)
    X = memory.patterns.detach().numpy()  # slots x dim
    expected = xi.numpy().copy()
    for _ in range(2):
        for i in range(len(expected)):
            logits = [2.0 * float(expected[i] @ X[j]) for j in range(7)]
            weights = np.exp(np.array(logits) - max(logits))
            weights /= weights.sum()
            expected[i] = sum(weights[j] * X[j] for j in range(7))
    np.testing.assert_allclose(memory(xi).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_nt_xent_matches_a_loop_over_eq_5_in_both_directions():
    torch.manual_seed(1)
    a, b = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    tau = 0.1
    reps = [x / np.linalg.norm(x) for x in np.concatenate([a.numpy(), b.numpy()])]
    n = 4
    losses = []
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(reps[i] @ reps[p] / tau) for p in range(2 * n) if p != i)
        losses.append(-math.log(math.exp(reps[i] @ reps[positive] / tau) / denominator))
    assert float(nt_xent(a, b, tau)) == pytest.approx(np.mean(losses), rel=1e-10)


def test_memory_is_applied_to_normal_samples_only():
    memory = HopfieldMemory(4, 3)
    z = torch.randn(5, 3)
    y = torch.tensor([True, False, True, False, False])
    out = memorise(z, y, memory)
    torch.testing.assert_close(out[~y], z[~y])
    torch.testing.assert_close(out[y], memory(z[y]))


def test_variance_and_double_hinge_losses_against_plain_formulas():
    retrieved = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]], dtype=torch.float64)
    # Per-dimension std over the batch (unbiased): dims (2.0, 0.0), with eps 1e-4.
    expected = -(math.sqrt(4.0 + 1e-4) + math.sqrt(0.0 + 1e-4)) / 2
    assert float(variance_loss(retrieved)) == pytest.approx(expected)
    # VICReg's hinge max(0, target - std), per dimension, averaged: (max(0, 1 - 2.00002), 1 - 0.01) / 2.
    assert float(variance_loss(retrieved, target=1.0)) == pytest.approx((0.0 + 1 - math.sqrt(1e-4)) / 2)
    # Bounded: spreading further stops paying once every std is past the target; the paper's form keeps paying.
    wide = torch.tensor([[0.0, 0.0], [10.0, 10.0]], dtype=torch.float64)
    assert float(variance_loss(wide, target=1.0)) == 0.0 == float(variance_loss(10 * wide, target=1.0))
    assert float(variance_loss(10 * wide)) < float(variance_loss(wide)) < 0
    d = torch.tensor([0.2, 0.9, 1.0, 3.0])
    y = torch.tensor([1, 1, 0, 0])
    # normal: max(d - 1/M, 0); anomaly: max(M - d, 0); M = 2
    assert float(double_hinge(d, y, 2.0)) == pytest.approx((0.0 + 0.4 + 1.0 + 0.0) / 4)


def test_dead_channels_do_not_blow_up_the_scaled_features():
    """Channels that never fire on the normal training rows (std 0) must not multiply a test
    activation by 1 / floor: the per-dimension divisor is floored at the median std of the
    channels that vary; "global" divides every channel by the root mean square std."""
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 8)) * np.array([1.0, 2.0, 0.5, 3.0, 1.5, 0.0, 0.0, 0.0])  # 3 dead channels
    std = train.std(0, ddof=1)
    test = np.zeros((1, 8))
    test[0, 6] = 5.0  # an activation in a dead channel
    for standardise, divisor in (("dimension", np.maximum(std, np.median(std[std > 0]))),
                                 ("global", np.full(8, np.sqrt((std ** 2).mean())))):
        projection = Projection(8, mlp=False)
        projection.set_statistics(torch.tensor(train, dtype=torch.float32), standardise)
        np.testing.assert_allclose(projection.std.numpy(), divisor, rtol=1e-5)
        with torch.no_grad():
            scaled = projection(torch.tensor(test, dtype=torch.float32)).numpy()
        np.testing.assert_allclose(scaled, (test - train.mean(0)) / divisor, rtol=1e-4, atol=1e-5)
        assert np.abs(scaled).max() < 10  # the 1e-6 floor made this 5e6
    l2 = Projection(8, l2=True, mlp=False)  # each row alone: norm sqrt(D), whatever it holds
    with torch.no_grad():
        assert float(l2(torch.tensor(test, dtype=torch.float32)).norm()) == pytest.approx(np.sqrt(8))


def test_maps_become_one_vector_per_position():
    maps = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)  # N, C, g, g
    out = positions(maps)
    assert out.shape == (2, 4, 3)
    for n in range(2):
        for i in range(2):
            for j in range(2):
                np.testing.assert_array_equal(out[n, i * 2 + j].numpy(), maps[n, :, i, j])
    assert positions(np.zeros((5, 7))).shape == (5, 1, 7)
    assert positions(np.zeros((5, 2, 3, 2, 2)), views=True).shape == (5, 2, 4, 3)


def test_scale_classifier_pools_the_difference_map_before_its_mlp():
    torch.manual_seed(0)
    classifier = ScaleClassifier(dim=3, positions=16, pool=1)
    delta = torch.randn(2, 16, 3)
    torch.testing.assert_close(classifier(delta), classifier.mlp(delta.mean(dim=1)).squeeze(-1))


# --- the head on features with a known answer ------------------------------------------------

def _subspace_features(seed: int = 0, n_train: int = 200, n_test: int = 200):
    """Normal: a map and a pooled vector in a 3-d subspace; anomalies: off it. Views: small noise."""
    rng = np.random.default_rng(seed)
    basis_map, basis_vec = rng.normal(size=(3, 8)), rng.normal(size=(3, 16))

    def sample(n, anomalous):
        coeff = rng.normal(size=(n, 4, 3))
        maps = coeff @ basis_map  # n, positions, channels
        vec = coeff.mean(axis=1) @ basis_vec
        if anomalous:
            maps = maps + rng.normal(0, 1.5, size=maps.shape)
            vec = vec + rng.normal(0, 1.5, size=vec.shape)
        return {"pooled": vec.astype(np.float32),
                "layer": maps.transpose(0, 2, 1).reshape(n, 8, 2, 2).astype(np.float32)}

    train = sample(n_train, False)
    views = {k: np.stack([v + rng.normal(0, 0.05, v.shape).astype(np.float32) for _ in range(2)], axis=1)
             for k, v in train.items()}
    normal, anomalous = sample(n_test, False), sample(n_test, True)
    test = {k: np.concatenate([normal[k], anomalous[k]]) for k in train}
    return train, views, test, np.r_[np.zeros(n_test), np.ones(n_test)]


# The paper's literal form, one option away from each adaptation (params.yaml, README).
PAPER = dict(projection="mlp", standardise="dimension", retrieval="dot", beta=2.0, slot_init="random",
             lambda_recall=0.0, variance_hinge=None, min_steps=1)


def test_the_paper_preset_is_the_papers_literal_form_and_the_defaults_are_params_yaml():
    import yaml

    from pipeline.declare import defaults, specs
    from pipeline.heads.anomem.settings import PARAMS, RUN
    from pipeline.params import PROJECT_PARAMS

    preset = {k: v for k, v in PARAMS.PRESETS["paper"].items() if k != "about"}
    assert preset == dict(PAPER, semi_stage_a="retrain", semi_score="classifier")
    declared, default = {**specs(PARAMS), **specs(RUN)}, {**defaults(PARAMS), **defaults(RUN)}
    assert all(declared[k].paper == v for k, v in preset.items())
    section = yaml.safe_load(PROJECT_PARAMS.read_text())["anomem"]
    assert {k for k, spec in declared.items() if spec.config} <= set(section)
    for key in set(section) & set(declared):
        assert declared[key].check(section[key], key) == declared[key].check(default[key], key), key


def test_declared_ranges_refuse_what_the_head_cannot_train_with():
    from pipeline.declare import specs
    from pipeline.heads.anomem.settings import RUN

    gammas = specs(RUN)["gammas"]
    assert gammas.parse("0.01,0.1", "gammas") == (0.01, 0.1) and gammas.parse("none", "gammas") is None
    assert gammas.check("0.01,0.05,0.1", "gammas") == (0.01, 0.05, 0.1)  # params.yaml writes them as text
    for bad in ("0", "0.5,1.5"):
        with pytest.raises(PipelineError, match="gammas"):
            gammas.parse(bad, "gammas")
    for settings, name in ((dict(variance_hinge=0.0), "variance_hinge"), (dict(sampling_ratio=0.0), "sampling_ratio"),
                           (dict(batch_size=1), "batch_size"), (dict(epochs=True), "epochs"),
                           (dict(lambda_recall=-1.0), "lambda_recall"), (dict(slot_init="zeros"), "slot_init")):
        with pytest.raises(PipelineError, match=name):
            AnoMemHead(**settings)._check_params()
    AnoMemHead(variance_hinge=None)._check_params()  # the paper's unbounded -std


@pytest.mark.parametrize("settings", [dict(), dict(memory="kmeans"), dict(scales="last"), PAPER,
                                      dict(PAPER, memory="kmeans")])
def test_one_class_head_detects_features_off_the_normal_subspace(settings):
    train, views, test, is_anomaly = _subspace_features()
    config = dict(epochs=15, batch_size=64, slots_intermediate=32, slots_last=16, proj_dim=16,
                          proj_hidden=32, **settings)
    head = AnoMemHead(**config).fit(bundle(train, views))
    assert roc_auc_score(is_anomaly, head.score_samples(test)) > 0.9
    # Stage A: --epochs, or more to reach min_steps (200 rows at batch 64: 4 steps an epoch);
    # nothing to train with a k-means memory on the features themselves.
    trained = config.get("projection", "none") == "mlp" or config.get("memory") != "kmeans"
    expected = max(15, -(-config.get("min_steps", 240) // 4)) if trained else 0
    assert len(head.history_) == expected and all(np.isfinite(r["loss"]) for r in head.history_)


@pytest.mark.parametrize("settings", [dict(), PAPER])
def test_one_class_score_is_the_scale_weighted_norm_of_z_minus_its_recollection(settings):
    """Eq. 13 and eq. 1 written out: z (the scaled feature, unit rows for cosine retrieval, or
    the MLP's output), its recollection softmax(beta z X^T) X from the stored slots X (unit rows
    for cosine retrieval), the norm of the difference over a scale's positions, weighted."""
    train, views, test, _ = _subspace_features()
    head = AnoMemHead(epochs=2, batch_size=64, slots_intermediate=8, slots_last=8, proj_dim=4,
                      proj_hidden=8, **settings).fit(bundle(train, views))
    assert head.scales_ == ["layer", "pooled"] and head.weights_ == {"layer": 1.0, "pooled": 2.0}
    cosine = head.retrieval == "cosine"
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    expected = 0.0
    for scale, weight in head.weights_.items():
        x = positions(test[scale]).numpy().astype(np.float64)
        projection = head.projections_[scale]
        if head.projection == "none":  # l2 scaling: unit rows times sqrt(D); no statistics
            z = unit(x) * np.sqrt(x.shape[-1])
        else:
            with torch.no_grad():
                z = projection(positions(test[scale])).numpy().astype(np.float64)
        slots = head.memories_[scale].patterns.detach().numpy().astype(np.float64)
        if cosine:
            z, slots = unit(z), unit(slots)
        logits = head.beta * z @ slots.T
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        recollection = (weights / weights.sum(-1, keepdims=True)) @ slots
        expected = expected + weight * np.sqrt(((z - recollection) ** 2).sum(axis=(1, 2)))
    np.testing.assert_allclose(head.score_samples(test), expected / 3.0, rtol=1e-4)


def test_controls_are_the_norm_of_z_and_the_brute_force_nearest_slot():
    train, views, test, _ = _subspace_features()
    head = AnoMemHead(epochs=2, batch_size=64, slots_intermediate=8, slots_last=8, proj_dim=4,
                      proj_hidden=8, **PAPER).fit(bundle(train, views))
    controls = head.control_scores(test)
    norm, nearest = 0.0, 0.0
    for scale, weight in head.weights_.items():
        with torch.no_grad():
            z = head.projections_[scale](positions(test[scale])).numpy().astype(np.float64)
        slots = head.memories_[scale].patterns.detach().numpy().astype(np.float64)
        norm = norm + weight * np.sqrt((z ** 2).sum(axis=(1, 2)))
        to_slots = np.array([[[np.linalg.norm(q - slot) for slot in slots] for q in image] for image in z])
        nearest = nearest + weight * np.sqrt((to_slots.min(-1) ** 2).sum(-1))
    np.testing.assert_allclose(controls["norm"], norm / 3.0, rtol=1e-4)
    np.testing.assert_allclose(controls["nearest_slot"], nearest / 3.0, rtol=1e-4, atol=1e-6)


def test_retrieval_diagnostics_read_flat_and_peaked_softmaxes():
    train, views, test, _ = _subspace_features()
    head = AnoMemHead(epochs=1, batch_size=64, slots_intermediate=8, slots_last=8, min_steps=1,
                      beta=0.0).fit(bundle(train, views))
    flat = head.diagnostics(test)  # beta 0: every slot weighs 1/8
    assert flat["retrieval_entropy_last"] == pytest.approx(1.0) and flat["retrieval_top_weight_last"] == pytest.approx(1 / 8)
    head.set_params(beta=1e4)
    for memory in head.memories_.values():
        memory.beta = 1e4
    peaked = head.diagnostics(test)  # one slot takes all
    assert peaked["retrieval_entropy_intermediate"] < 0.01 and peaked["retrieval_top_weight_intermediate"] > 0.99


def test_kmeans_ablation_memory_holds_the_centroids_of_the_projected_normal_features():
    train, views, _, _ = _subspace_features()
    head = AnoMemHead(memory="kmeans", scales="last", epochs=2, batch_size=64, slots_last=5,
                                   proj_dim=4, proj_hidden=8, seed=3).fit(bundle(train, views))
    with torch.no_grad():
        z = torch.nn.functional.normalize(positions(train["pooled"]), dim=-1).reshape(-1, 16).numpy()
    centroids = KMeans(5, n_init=1, random_state=3).fit(z).cluster_centers_
    np.testing.assert_allclose(head.memories_["pooled"].patterns.detach().numpy(), centroids, rtol=1e-5, atol=1e-5)


def test_kmeans_slots_are_set_before_each_monitored_epoch():
    """The per-epoch curve of the k-means ablation is read with k-means slots of that epoch's
    projection, not with the random slots stage A starts from."""
    train, views, _, _ = _subspace_features()
    seen = []

    def watch(head, record):
        with torch.no_grad():
            z = head._project("pooled", positions(train["pooled"])).reshape(-1, 4).numpy()
        centroids = KMeans(5, n_init=1, random_state=3).fit(z).cluster_centers_
        seen.append(np.abs(head.memories_["pooled"].patterns.detach().numpy() - centroids).max())

    AnoMemHead(memory="kmeans", scales="last", projection="mlp", epochs=3, min_steps=1, batch_size=64,
               slots_last=5, proj_dim=4, proj_hidden=8, seed=3).fit(bundle(train, views), callback=watch)
    assert len(seen) == 3 and max(seen) < 1e-4


def test_semi_supervised_head_trains_classifiers_and_uses_the_labels():
    train, views, test, is_anomaly = _subspace_features(n_train=200)
    # Ten labelled anomalies, made like the test anomalies.
    _, _, extra, extra_is_anomaly = _subspace_features(seed=5, n_test=10)
    anomalies = {k: v[extra_is_anomaly == 1] for k, v in extra.items()}
    plain = {k: np.concatenate([train[k], anomalies[k]]) for k in train}
    rng = np.random.default_rng(0)
    both = {k: np.concatenate([views[k], np.stack([anomalies[k]] * 2, axis=1)
                               + rng.normal(0, 0.05, (10, 2, *anomalies[k].shape[1:])).astype(np.float32)])
            for k in views}
    is_normal = np.r_[np.ones(200, bool), np.zeros(10, bool)]
    # Unit-norm z makes small differences z - HF(z): the classifiers take more steps than on the MLP's.
    config = dict(epochs=10, sup_epochs=200, batch_size=64, slots_intermediate=16, slots_last=16,
                  proj_dim=16, proj_hidden=32)
    head = AnoMemHead(**config).fit(bundle(plain, both), (~is_normal).astype(int))
    assert set(head.classifiers_.keys()) == {"layer", "pooled"}
    assert roc_auc_score(is_anomaly, head.score_samples(test)) > 0.9
    one_class = AnoMemHead(**config).fit(bundle(plain, both))  # the same rows, no labels: no classifiers
    assert len(one_class.classifiers_) == 0


def _semi_rows(labelled: int, seed: int = 0):
    """Normal rows in a 3-d subspace with noise; anomalies shifted along one fixed direction, by
    about half the noise's norm, so the one-class score ranks them imperfectly and labelled ones
    of the same kind can teach more: 200 normal training rows, ``labelled`` anomalies, their
    views, and a test set of 200 + 200."""
    rng = np.random.default_rng(seed)
    basis_map, basis_vec = rng.normal(size=(3, 8)), rng.normal(size=(3, 16))
    defect_map, defect_vec = rng.normal(size=8), rng.normal(size=16)

    def sample(n: int, anomalous: bool) -> dict:
        coeff = rng.normal(size=(n, 4, 3))
        maps = coeff @ basis_map + rng.normal(0, 0.3, (n, 4, 8))
        vec = coeff.mean(axis=1) @ basis_vec + rng.normal(0, 0.3, (n, 16))
        if anomalous:
            maps = maps + 0.5 * rng.normal(1, 0.3, (n, 4, 1)) * defect_map
            vec = vec + 0.5 * rng.normal(1, 0.3, (n, 1)) * defect_vec
        return {"pooled": vec.astype(np.float32),
                "layer": maps.transpose(0, 2, 1).reshape(n, 8, 2, 2).astype(np.float32)}

    normal, anomalies = sample(200, False), sample(labelled, True)
    plain = {k: np.concatenate([normal[k], anomalies[k]]) for k in normal}
    views = {k: np.stack([v + rng.normal(0, 0.05, v.shape).astype(np.float32) for _ in range(2)], axis=1)
             for k, v in plain.items()}
    test_normal, test_anomalies = sample(200, False), sample(200, True)
    test = {k: np.concatenate([test_normal[k], test_anomalies[k]]) for k in normal}
    return bundle(plain, views), np.r_[np.zeros(200, int), np.ones(labelled, int)], test, np.r_[np.zeros(200),
                                                                                                  np.ones(200)]


SEMI_CONFIG = dict(epochs=5, sup_epochs=100, batch_size=64, slots_intermediate=16, slots_last=16, proj_dim=16,
                   proj_hidden=32)


def test_combined_semi_score_is_the_one_class_score_with_one_labelled_anomaly():
    """One labelled anomaly cannot be cross-validated: the weight is 0 and the head ranks the
    test images exactly as its one-class stage does (same stage A, warm start)."""
    import copy

    features, labels, test, _ = _semi_rows(labelled=1)
    one_class = AnoMemHead(**SEMI_CONFIG).fit(features.take(np.flatnonzero(labels == 0)))
    semi = copy.deepcopy(one_class).set_params(warm_start=True).fit(features, labels)
    assert semi.mix_["weight"] == 0.0 and semi.mix_["folds"] == 1
    standardised = (one_class.score_samples(test) - semi.mix_["one_class"][0]) / semi.mix_["one_class"][1]
    np.testing.assert_allclose(semi.score_samples(test), standardised, rtol=1e-6, atol=1e-9)


def test_combined_semi_score_gives_helpful_labels_weight():
    """Ten labelled anomalies like the test ones: the cross-validation gives the classifiers
    weight, and the head ranks the test set better than its one-class stage."""
    import copy

    features, labels, test, is_anomaly = _semi_rows(labelled=10)
    one_class = AnoMemHead(**SEMI_CONFIG).fit(features.take(np.flatnonzero(labels == 0)))
    semi = copy.deepcopy(one_class).set_params(warm_start=True).fit(features, labels)
    assert semi.mix_["weight"] > 0 and semi.mix_["folds"] == 5
    assert (roc_auc_score(is_anomaly, semi.score_samples(test))
            > roc_auc_score(is_anomaly, one_class.score_samples(test)) + 0.05)


def test_mix_weight_is_the_cross_validated_best_and_survives_saving():
    """The chosen weight maximises the recorded held-out AUROC, ties going to the smaller weight;
    a head rebuilt from its state scores the same."""
    from pipeline.heads.anomem.head import MIX_WEIGHTS

    features, labels, test, _ = _semi_rows(labelled=10)
    head = AnoMemHead(**SEMI_CONFIG).fit(features, labels)
    cv = {float(w): a for w, a in head.mix_["cv_auroc"].items()}
    assert set(cv) == set(MIX_WEIGHTS)
    assert head.mix_["weight"] == min(w for w in MIX_WEIGHTS if cv[w] == max(cv.values()))
    rebuilt = AnoMemHead._from_state(head._state())
    np.testing.assert_allclose(rebuilt.score_samples(test), head.score_samples(test), rtol=1e-6)


def test_head_refuses_missing_scales_and_views():
    train, views, _, _ = _subspace_features()
    with pytest.raises(PipelineError, match="views"):
        AnoMemHead(epochs=1).fit(bundle(train, {"pooled": views["pooled"]}))
    with pytest.raises(PipelineError, match="intermediate map"):
        AnoMemHead(epochs=1).fit(bundle({"pooled": train["pooled"]}, views))
    with pytest.raises(PipelineError, match="memory"):
        AnoMemHead(memory="random").fit(bundle(train, views))


def test_anomalies_are_drawn_from_other_classes_in_the_asked_ratio():
    labels = np.repeat(np.arange(4), 50)
    index, is_normal = draw_anomalies(labels, 2, 0.1, draw=0)
    assert is_normal.sum() == 50 and (~is_normal).sum() == 5
    assert (labels[index[is_normal]] == 2).all() and (labels[index[~is_normal]] != 2).all()
    again, _ = draw_anomalies(labels, 2, 0.1, draw=0)
    other, _ = draw_anomalies(labels, 2, 0.1, draw=1)
    np.testing.assert_array_equal(index, again)
    assert not np.array_equal(index, other)
    assert (~draw_anomalies(labels, 2, 0.001, draw=0)[1]).sum() == 1  # at least one
    assert draw_anomalies(labels, 2, 0.0, draw=0)[1].all()


# --- the views cache and the stage ------------------------------------------------------------

@pytest.fixture(scope="module")
def cache_with_views(synthetic_cache, tmp_path_factory):
    from pipeline.backbones import load_backbone

    folder = tmp_path_factory.mktemp("views")
    path = folder / "synthetic.zarr"
    shutil.copytree(synthetic_cache.path, path)
    cache = FeatureCache.open(path)
    extract_views(load_dataset("synthetic"), cache, load_backbone("efficientnet_lite0", 32), views=2,
                  batch_size=8, workers=0)
    return cache


def test_views_are_cached_beside_the_features_and_are_reproducible(cache_with_views, tmp_path):
    from pipeline.backbones import load_backbone

    cache = cache_with_views
    views = open_views(cache)
    n = cache.size("train")
    assert views.path == views_path(cache.path) and views.path.name == "synthetic.views.zarr"
    assert views.array("train").shape == (n, 2, 1280)
    assert views.array("train", "maps/stride16").shape == (n, 2, 112, 2, 2)  # the cache's grid: 2x2 at 32 px
    np.testing.assert_array_equal(views.read("train", "rows"), np.arange(n))
    np.testing.assert_array_equal(views.labels("train"), cache.labels("train"))
    feats = views.read("train")
    assert not np.allclose(feats[:, 0], feats[:, 1])  # two different augmentations
    assert not np.allclose(feats[:, 0], cache.features("train"))
    assert views.verify() == []
    # A second store with 5 images per class: the same seed draws the same augmentations
    # for the same batch, and it is refused for another cache.
    path = tmp_path / "copy.zarr"
    shutil.copytree(cache.path, path)
    copy = FeatureCache.open(path)
    subset = extract_views(load_dataset("synthetic"), copy, load_backbone("efficientnet_lite0", 32), views=2,
                           per_class=5, batch_size=8, workers=0, augmentation=Augmentation(crop_scale_min=0.5))
    rows = subset.read("train", "rows")
    assert len(rows) == 15 and all((cache.labels("train")[rows] == c).sum() == 5 for c in range(3))
    assert subset.metadata["views"]["augmentation"]["crop_scale_min"] == 0.5
    copy.group.attrs["metadata"] = {**copy.metadata, "backbone": {"name": "other"}}
    with pytest.raises(PipelineError, match="different cache"):
        open_views(copy)


def test_views_of_an_interrupted_run_resume_to_the_same_numbers(cache_with_views, tmp_path):
    from pipeline.backbones import load_backbone

    path = tmp_path / "resume.zarr"
    shutil.copytree(cache_with_views.path, path)
    shutil.copytree(views_path(cache_with_views.path), views_path(path))
    before = FeatureCache.open(views_path(path)).read("train")
    store = FeatureCache.open(views_path(path))
    store.set_aside("train", {1})
    store.array("train")[16:32] = 0
    extract_views(load_dataset("synthetic"), FeatureCache.open(path), load_backbone("efficientnet_lite0", 32),
                  views=2, batch_size=8, workers=0)
    np.testing.assert_array_equal(FeatureCache.open(views_path(path)).read("train"), before)


def test_anomem_stage_writes_one_class_and_semi_supervised_metrics(cache_with_views, tmp_path):
    from pipeline.commands.anomem import main

    metrics = tmp_path / "anomem.json"
    result = CliRunner().invoke(main, ["--cache", str(cache_with_views.path), "--epochs", "3", "--sup-epochs", "3",
                                       "--slots-intermediate", "16", "--slots-last", "8", "--gammas", "0.1",
                                       "--draws", "2", "--semi-stage-a", "reuse", "--metrics", str(metrics),
                                       "--plots", str(tmp_path / "roc"),
                                       "--expect", "backbone.name=efficientnet_lite0"])
    assert result.exit_code == 0, result.output
    numbers = json.loads(metrics.read_text())  # for dvc metrics: numbers only, the rest beside
    leaves = lambda d: [x for v in d.values() for x in (leaves(v) if isinstance(v, dict) else [v])]  # noqa: E731
    assert "about" not in numbers and all(isinstance(v, (int, float)) for v in leaves(numbers))
    payload = metrics_file.read(metrics)
    assert set(payload["per_class"]) == {"class0", "class1", "class2"}
    assert 0 <= payload["mean"]["auroc"] <= 1 and payload["about"]["head"] == "anomem"
    # No projection by default: slots of Lite0's stride-16 map (112 channels) and pooled vector (1280).
    assert payload["about"]["footprint"]["memory_values"] == 16 * 112 + 8 * 1280
    for control in ("norm", "nearest_slot"):  # graded like the head's score, per class and mean
        assert set(payload["controls"][control]["per_class"]) == {"class0", "class1", "class2"}
        assert 0 <= payload["controls"][control]["mean"]["auroc"] <= 1
    diagnostics = payload["diagnostics"]["mean"]
    assert 0 < diagnostics["retrieval_top_weight_last"] <= 1 and 0 <= diagnostics["retrieval_entropy_intermediate"] <= 1
    assert "||z|| alone" in result.output and "nearest slot" in result.output
    assert payload["about"]["footprint"]["knn_gallery_values"] == 24 * 1280
    assert set(payload["semi_supervised"]) == {"0.1"} and payload["semi_supervised"]["0.1"]["stage_a"] == "reuse"
    assert 0 <= payload["semi_supervised"]["0.1"]["mean"]["auroc"] <= 1
    assert (tmp_path / "roc" / "roc_class0.json").exists()
    assert "mean AUROC" in result.output


def test_anomem_stage_explains_a_cache_without_views(synthetic_cache, tmp_path):
    from pipeline.commands.anomem import main

    path = tmp_path / "noviews.zarr"
    shutil.copytree(synthetic_cache.path, path)
    result = CliRunner().invoke(main, ["--cache", str(path), "--metrics", str(tmp_path / "m.json")])
    assert result.exit_code != 0 and "--views 2" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.json").exists()
    for gammas in ("0.5,abc", "0", "1.5"):  # each in (0, 1]: refused by the option, before the cache is read
        bad = CliRunner().invoke(main, ["--cache", str(path), "--gammas", gammas])
        assert bad.exit_code != 0 and "gammas must be a number > 0 and <= 1" in bad.output, gammas


def test_anomem_stage_refuses_a_knn_baseline_above_the_images_with_views_before_training(cache_with_views, tmp_path):
    """The baseline's kNN runs after every AnoMem run: a k it cannot take is refused first."""
    from pipeline.commands.anomem import main

    with_views = len(open_views(cache_with_views).read("train", "rows"))
    result = CliRunner().invoke(main, ["--cache", str(cache_with_views.path), "--knn-baseline", str(with_views),
                                       "--metrics", str(tmp_path / "m.json")])
    assert result.exit_code != 0 and "--knn-baseline" in result.output and "Traceback" not in result.output
    assert "mean AUROC" not in result.output and not (tmp_path / "m.json").exists()


def test_saved_anomem_head_scores_like_the_trained_one(cache_with_views, tmp_path):
    from pipeline.commands.anomem import main
    from pipeline.heads.loading import load_head

    result = CliRunner().invoke(main, ["--cache", str(cache_with_views.path), "--epochs", "2", "--classes", "class1",
                                       "--memory", "kmeans", "--slots-intermediate", "8", "--slots-last", "4",
                                       "--knn-baseline", "0", "--gammas", "none", "--metrics", str(tmp_path / "m.json"),
                                       "--save-heads", str(tmp_path / "heads")])
    assert result.exit_code == 0, result.output
    payload = metrics_file.read(tmp_path / "m.json")  # --gammas none: one-class only
    assert "semi_supervised" not in payload and "knn_same_rows" not in payload and payload["about"]["gammas"] is None
    saved = load_head(tmp_path / "heads" / "class1.head")
    assert saved.kind == "anomem" and saved.multi_scale and saved.class_name == "class1"
    data = read_data(cache_with_views, maps=True, views=True)
    train = data.train.take(data.training_rows(1))
    trained = AnoMemHead(epochs=2, memory="kmeans", slots_intermediate=8, slots_last=4).fit(train)
    np.testing.assert_allclose(saved.score(data.test.pooled, {"stride16": data.test.maps["stride16"]}),
                               trained.score_samples(data.test), rtol=1e-5)
    train_scores = trained.score_samples(train)
    assert saved.threshold == pytest.approx(np.quantile(train_scores, 0.95), rel=1e-5)


def test_classifiers_can_be_trained_on_a_finished_stage_a_without_changing_it():
    import copy

    train, views, test, is_anomaly = _subspace_features()
    _, _, extra, extra_is_anomaly = _subspace_features(seed=5, n_test=10)
    plain = {k: np.concatenate([train[k], extra[k][extra_is_anomaly == 1]]) for k in train}
    is_normal = np.r_[np.ones(200, bool), np.zeros(10, bool)]
    head = AnoMemHead(epochs=5, sup_epochs=400, batch_size=64, slots_intermediate=16, slots_last=16,
                      proj_dim=16, proj_hidden=32).fit(bundle(train, views))
    before = copy.deepcopy(head.memories_.state_dict())
    semi = copy.deepcopy(head).set_params(warm_start=True, seed=1).fit(Features.of(plain), (~is_normal).astype(int))
    assert set(semi.classifiers_.keys()) == {"layer", "pooled"} and len(head.classifiers_) == 0
    for name, value in semi.memories_.state_dict().items():
        torch.testing.assert_close(value, before[name])
    assert roc_auc_score(is_anomaly, semi.score_samples(test)) > 0.9
    with pytest.raises(PipelineError, match="both"):
        copy.deepcopy(head).fit_classifiers(train, np.ones(200, bool))


def test_anomem_jobs_on_a_local_cluster_equal_in_process(cache_with_views, tmp_path):
    """Each (class, draw) as a Dask job: the same metrics as in process at the workers' thread
    count (1 with local:2 on 2 cores; float32 sums round differently with other counts), the
    one-class heads shipped back and, for stage-A reuse, shipped out again."""

    import torch

    from pipeline.commands.anomem import main
    from pipeline.distributed import open_client

    head = AnoMemHead(epochs=2, sup_epochs=2, slots_intermediate=16, slots_last=8, device="cpu")
    cache = cache_with_views
    data = read_data(cache, maps=True, views=False)
    workers_threads = max(1, (os.cpu_count() or 1) // 2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(workers_threads)
        serial = evaluate_one_vs_all(cache, head, [0, 2], keep_heads=True)
        reuse = {name: r["head"] for name, r in serial.items()}
        serial_semi = evaluate_one_vs_all(cache, head, [0, 2], seeds=range(2), gamma=0.2, start_from=reuse)
    finally:
        torch.set_num_threads(threads)
    with open_client("local:2") as client:
        jobs = evaluate_one_vs_all(cache, head, [0, 2], keep_heads=True, client=client)
        shipped = {name: r["head"] for name, r in jobs.items()}
        jobs_semi = evaluate_one_vs_all(cache, head, [0, 2], seeds=range(2), gamma=0.2, start_from=shipped,
                                        client=client)
    for got, expected in ((jobs, serial), (jobs_semi, serial_semi)):
        assert list(got) == list(expected)
        for name in expected:
            assert got[name]["metrics"] == expected[name]["metrics"] and got[name]["runs"] == expected[name]["runs"]
            assert got[name]["roc"] == expected[name]["roc"]
    probe = data.test.take(np.arange(5))
    for name in serial:
        np.testing.assert_array_equal(jobs[name]["head"].score_samples(probe), serial[name]["head"].score_samples(probe))
    # The stage end to end with --scheduler.
    metrics = tmp_path / "m.json"
    result = CliRunner().invoke(main, ["--cache", str(cache.path), "--epochs", "2", "--sup-epochs", "2",
                                       "--slots-intermediate", "16", "--slots-last", "8", "--gammas", "0.2",
                                       "--draws", "2", "--classes", "class0", "--scheduler", "local:2",
                                       "--device", "cpu", "--metrics", str(metrics)])
    assert result.exit_code == 0, result.output
    assert set(json.loads(metrics.read_text())["semi_supervised"]) == {"0.2"}
