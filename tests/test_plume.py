"""PLUME: the maths against plain reference computations, then the head and its command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline import metrics_file
from pipeline.errors import PipelineError
from pipeline.heads.plume.head import PlumeHead, lr_range_test
from pipeline.heads.plume.model import (Classifier, InputNorm, Perturbator, contrastive_loss,
                                        explicit_linear_perturbation, kl_divergence, linear_perturbation,
                                        mean_contrastive_loss, near_identity_loss, perturb)


def random_inputs(n=6, d=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]


def test_rank_one_update_equals_explicit_matrix_values_and_gradients():
    x, alpha, beta = random_inputs()
    # The reference: build I + alpha_i beta_i^T for each sample by hand and multiply.
    reference = torch.stack([(torch.eye(40, dtype=torch.float64) + torch.outer(a, b)) @ v
                             for v, a, b in zip(x, alpha, beta)])
    weights = torch.randn(6, 40, dtype=torch.float64)
    grads_ref = torch.autograd.grad((reference * weights).sum(), (x, alpha, beta))
    fast = linear_perturbation(x, alpha, beta)
    grads_fast = torch.autograd.grad((fast * weights).sum(), (x, alpha, beta))
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-12)
    for g_fast, g_ref in zip(grads_fast, grads_ref):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-12, atol=1e-12)
    # The bmm baseline of the benchmark computes the same map.
    torch.testing.assert_close(explicit_linear_perturbation(x, alpha, beta), reference)


def test_other_perturbations():
    x, alpha, beta = random_inputs()
    torch.testing.assert_close(perturb(x, "addmult", alpha, beta), alpha * x + beta)
    torch.manual_seed(1)
    noisy = perturb(x.detach(), "gaussian", noise_std=0.5)
    assert 0.4 < float((noisy - x).detach().std()) < 0.6
    with pytest.raises(ValueError):
        perturb(x, "rotation", alpha, beta)


def test_perturbator_shapes_and_identity_parts():
    x = torch.randn(5, 12)
    for kind in ("linear", "addmult", "add", "mult"):
        alpha, beta, mu, logvar = Perturbator(12, kind)(x)
        assert alpha.shape == beta.shape == mu.shape == logvar.shape == (5, 12)
    alpha, beta, *_ = Perturbator(12, "add")(x)
    assert torch.equal(alpha, torch.ones_like(alpha))
    alpha, beta, *_ = Perturbator(12, "mult")(x)
    assert torch.equal(beta, torch.zeros_like(beta))
    assert Perturbator(12, "add").fc5.out_features == 12 and Perturbator(12, "linear").fc5.out_features == 24


def test_near_identity_and_kl_against_plain_formulas():
    _, alpha, beta = random_inputs()
    expected = np.mean([float(((a - 1) ** 2).sum() + (b ** 2).sum()) for a, b in zip(alpha.detach(), beta.detach())])
    assert float(near_identity_loss(alpha, beta, "sum")) == pytest.approx(expected, rel=1e-12)
    # The authors' loss: two mse_loss terms summed, not halved (issue 17's bug was a /2 here).
    mse = (torch.nn.functional.mse_loss(alpha, torch.ones_like(alpha))
           + torch.nn.functional.mse_loss(beta, torch.zeros_like(beta)))
    assert float(near_identity_loss(alpha, beta, "mean")) == pytest.approx(float(mse), rel=1e-12)

    mu, logvar, _ = random_inputs(seed=3)
    normal = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    standard = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    reference = torch.distributions.kl_divergence(normal, standard).sum(1).mean()
    torch.testing.assert_close(kl_divergence(mu, logvar), reference)


def cos(a, b, tau):
    return float(a @ b / (a.norm() * b.norm())) / tau


def test_contrastive_loss_equals_equation_7_loop():
    z, z_tilde, _ = random_inputs(n=5, d=8, seed=4)
    tau, n = 0.5, 5
    total = 0.0
    for i in range(n):
        denominator = sum(math.exp(cos(z[i], z_tilde[l], tau)) + (l != i) * math.exp(cos(z[i], z[l], tau))
                          for l in range(n))
        total += sum(-math.log(math.exp(cos(z[i], z[j], tau)) / denominator) for j in range(n) if j != i) / (n - 1)
    assert float(contrastive_loss(z, z_tilde, tau)) == pytest.approx(total / n, rel=1e-10)


def test_mean_contrastive_loss_equals_equation_9_loop():
    z, z_tilde, _ = random_inputs(n=5, d=8, seed=5)
    tau = 0.5
    z_mean, z_tilde_mean = z.mean(0), z_tilde.mean(0)
    total = sum(-math.log(math.exp(cos(v, z_mean, tau)) / (math.exp(cos(v, z_mean, tau)) + math.exp(cos(v, z_tilde_mean, tau))))
                for v in z)
    assert float(mean_contrastive_loss(z, z_tilde, tau)) == pytest.approx(total / 5, rel=1e-10)


def test_input_norm_pools_to_dim_and_classifier_matches_table_3():
    assert InputNorm(1280, 3072)(torch.randn(4, 1280)).shape == (4, 3072)
    x = torch.randn(4, 16)
    norm = InputNorm(16, 16)
    torch.testing.assert_close(norm(x), (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5))
    classifier = Classifier(3072)
    assert sum(p.numel() for p in classifier.parameters()) == 3072 * 1024 + 1024 * 512 + 512
    assert sum(p.numel() for p in Perturbator(3072).parameters()) == pytest.approx(56.6e6, rel=0.01)


def subspace_data(seed=0, d=32, rank=4):
    """Normal data on a rank-4 subspace; anomalies leave it. Perturbations that push samples
    off the subspace teach the classifier exactly what separates the two."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]

    def normal(n):
        return (rng.normal(size=(n, rank)) * 3) @ basis[:, :rank].T + 0.05 * rng.normal(size=(n, d)) + 1

    train = normal(512).astype(np.float32)
    anomalies = normal(200) + rng.normal(size=(200, d - rank)) @ basis[:, rank:].T
    test = np.concatenate([normal(200), anomalies]).astype(np.float32)
    return train, test, np.r_[np.zeros(200), np.ones(200)]


@pytest.mark.parametrize("perturbation,guidance", [("linear", "contrastive"), ("gaussian", "none"),
                                                   ("addmult", "none"), ("linear", "mean")])
def test_head_learns_to_detect_points_off_the_normal_subspace(perturbation, guidance):
    train, test, is_anomaly = subspace_data()
    head = PlumeHead(perturbation=perturbation, guidance=guidance, epochs=6, dim="native",
                                 batch_mode="joint")
    from sklearn.metrics import roc_auc_score
    monitored = []  # the evaluation's callback: the head never sees the test set itself
    head.fit(train, callback=lambda h, r: monitored.append(roc_auc_score(is_anomaly, h.score_samples(test))))
    assert [r["epoch"] for r in head.history_] == list(range(1, 7)) and len(monitored) == 6
    assert {"loss", "ce", "identity", "kl", "guidance"} <= set(head.history_[0])
    assert "test_auroc" not in head.history_[0]
    final = roc_auc_score(is_anomaly, head.score_samples(test))
    assert final == pytest.approx(monitored[-1])  # the callback saw the head as it ends
    assert final > 0.9


def test_score_is_minus_the_logit_and_training_is_deterministic():
    train, test, is_anomaly = subspace_data(seed=1)
    config = dict(epochs=2, dim=24, lr=1e-3)
    head = PlumeHead(seed=3, **config).fit(train)
    again = PlumeHead(seed=3, **config).fit(train)
    other = PlumeHead(seed=4, **config).fit(train)
    np.testing.assert_array_equal(head.score_samples(test), again.score_samples(test))
    assert not np.array_equal(head.score_samples(test), other.score_samples(test))
    with torch.no_grad():
        head.classifier_.eval(), head.input_norm_.eval()
        logits = head.classifier_(head.input_norm_(torch.as_tensor(test)))
    np.testing.assert_allclose(head.score_samples(test), -logits.numpy(), rtol=1e-6)


def test_lr_range_test_picks_a_rate_and_restores_the_modules():
    train, _, _ = subspace_data()
    head = PlumeHead(dim="native")
    head.input_norm_, head.classifier_ = InputNorm(32, 32), Classifier(32)
    perturbator = Perturbator(32)
    before = [p.clone() for p in head.classifier_.parameters()]
    lr = lr_range_test(head, perturbator, torch.as_tensor(train), 32, torch.Generator().manual_seed(0), steps=40)
    assert 1e-7 < lr < 0.1
    assert all(torch.equal(a, b) for a, b in zip(before, head.classifier_.parameters()))


def test_bad_configurations_are_clear_errors():
    with pytest.raises(PipelineError, match="perturbation must be one of"):
        PlumeHead(perturbation="rotate").fit(np.zeros((4, 8), np.float32))
    with pytest.raises(PipelineError, match="batch size"):
        PlumeHead(batch_size=1).fit(np.zeros((4, 8), np.float32))
    with pytest.raises(PipelineError, match="at least 2 training"):
        PlumeHead(dim="native").fit(np.zeros((1, 8), np.float32))
    head = PlumeHead(dim="native", epochs=1).fit(np.random.rand(8, 8).astype(np.float32))
    with pytest.raises(PipelineError, match="trained on 8-d"):
        head.score_samples(np.zeros((3, 5), np.float32))


def test_plume_command_writes_final_and_best_epoch_metrics_and_curves(synthetic_cache, tmp_path):
    from pipeline.heads.plume.command import main

    metrics, plots = tmp_path / "plume.json", tmp_path / "plots"
    result = CliRunner().invoke(main, ["--cache", str(synthetic_cache.path), "--epochs", "2", "--dim", "native",
                                       "--seeds", "2", "--classes", "0,1", "--lr", "1e-3",
                                       "--metrics", str(metrics), "--plots", str(plots),
                                       "--curves", str(plots / "curves")])
    assert result.exit_code == 0, result.output
    payload = metrics_file.read(metrics)
    assert set(payload["per_class"]) == {synthetic_cache.classes[0], synthetic_cache.classes[1]}
    for m in [payload["mean"], *payload["per_class"].values()]:
        assert {"auroc", "auroc_std", "best_epoch_auroc", "best_epoch_auroc_std", "aupr", "fpr_at_95_tpr"} <= set(m)
        assert m["best_epoch_auroc"] >= m["auroc"] - 1e-9 or m["auroc_std"] > 0
    assert payload["about"]["head"] == "plume" and payload["about"]["seeds"] == 2
    curves = json.loads((plots / "curves" / f"train_{synthetic_cache.classes[0]}.json").read_text())
    assert [(c["seed"], c["epoch"]) for c in curves] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert "best-epoch AUROC" in result.output


def test_plume_command_help_and_bad_input(synthetic_cache):
    from pipeline.heads.plume.command import main

    runner = CliRunner()
    help_text = runner.invoke(main, ["--help"]).output
    assert "--perturbation" in help_text and "range test" in help_text
    bad = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--lr", "fast"])
    assert bad.exit_code == 2 and "neither a number nor auto" in bad.output
    bad = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--epochs", "1", "--dim", "native",
                               "--expect", "backbone.name=resnet50"])
    assert bad.exit_code == 1 and "Traceback" not in bad.output


def test_ablation_command_lays_out_table_1c_with_knn_and_paper_columns(synthetic_cache, tmp_path):
    from pipeline.heads.knn.command import main as knn_main
    from stages.plume_ablation import main

    runner = CliRunner()
    knn_metrics = tmp_path / "knn.json"
    assert runner.invoke(knn_main, ["--cache", str(synthetic_cache.path), "--classes", "0,1",
                                    "--metrics", str(knn_metrics)]).exit_code == 0
    table = tmp_path / "table.md"
    result = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--epochs", "1", "--dim", "native",
                                  "--lr", "1e-3", "--classes", "0,1", "--variants", "gaussian/none,linear/contrastive",
                                  "--knn-metrics", str(knn_metrics), "--metrics", str(tmp_path / "abl.json"),
                                  "--plots", str(tmp_path / "plots"), "--table", str(table)])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "abl.json").read_text())
    assert set(payload["variants"]) == {"gaussian/none", "linear/contrastive"}
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| Perturbation | Guidance |") and "Mean (best epoch)" in rows[0]
    assert rows[1].startswith("| Gaussian | - |") and rows[2].startswith("| LinearMap | contrastive |")
    assert rows[3].startswith("| kNN (DN2) | k = 2 |")
    # Synthetic data: no published column (that one is CIFAR-10's).
    assert "paper mean" not in rows[0]
    assert (tmp_path / "plots" / "linear_contrastive" / "training").is_dir()
    # The same table rebuilt from the metrics file (how variants run in separate processes are merged).
    from pipeline.report.command import main as report_main
    rebuilt = runner.invoke(report_main, ["plume-table", str(tmp_path / "abl.json"), "--knn-metrics", str(knn_metrics)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert [line for line in rebuilt.output.splitlines() if line.startswith("| ")] == rows
    bad = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--variants", "linear/magic"])
    assert bad.exit_code == 2 and "PERTURBATION/GUIDANCE" in bad.output


def test_published_column_matches_the_reference_file():
    from pipeline.heads.plume.report import plume_paper_mean

    assert plume_paper_mean("linear", "contrastive") == 83.4
    assert plume_paper_mean("gaussian", "none") == 77.5
    assert plume_paper_mean("add", "none") is None
