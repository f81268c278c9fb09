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
from pipeline.heads.plume.head import (PlumeHead, debiased_moving_average, lightning_exponential_rates,
                                       lr_range_test, steepest_descent_rate)
from pipeline.heads.plume.model import (Classifier, InputNorm, Perturbator, contrastive_loss,
                                        explicit_linear_perturbation, identity_targets, kl_divergence,
                                        limit_shift, linear_perturbation, mean_contrastive_loss, near_identity_loss,
                                        perturb, perturbation_diagnostics)


def paper(**changes) -> PlumeHead:
    """The paper's eq. 1 with ``changes``: no held-out images, no step floor, no limit on the
    shifts, so that what a test sets is all that shapes the training."""
    return PlumeHead.preset("paper", **changes)


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
    assert near_identity_loss(alpha, beta, "sum").item() == pytest.approx(expected, rel=1e-12)
    # The authors' loss: two mse_loss terms summed, not halved (issue 17's bug was a /2 here).
    mse = (torch.nn.functional.mse_loss(alpha, torch.ones_like(alpha))
           + torch.nn.functional.mse_loss(beta, torch.zeros_like(beta)))
    assert near_identity_loss(alpha, beta, "mean").item() == pytest.approx(mse.item(), rel=1e-12)

    mu, logvar, _ = random_inputs(seed=3)
    normal = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    standard = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    reference = torch.distributions.kl_divergence(normal, standard).sum(1).mean()
    torch.testing.assert_close(kl_divergence(mu, logvar), reference)


@pytest.mark.parametrize("target,alpha_to,beta_to", [("paper", 1.0, 0.0), ("authors", 0.0, 1.0)])
def test_identity_targets_against_plain_sums(target, alpha_to, beta_to):
    _, alpha, beta = random_inputs(seed=6)
    a, b = alpha.detach().numpy(), beta.detach().numpy()
    n, d = a.shape
    per_sample = [sum((a[i, j] - alpha_to) ** 2 + (b[i, j] - beta_to) ** 2 for j in range(d)) for i in range(n)]
    targets = identity_targets("linear", target)
    assert targets == (alpha_to, beta_to)
    assert near_identity_loss(alpha, beta, "sum", targets).item() == pytest.approx(np.mean(per_sample), rel=1e-12)
    assert near_identity_loss(alpha, beta, "mean", targets).item() == pytest.approx(sum(per_sample) / (n * d),
                                                                                     rel=1e-12)
    # alpha * x + beta: the identity is alpha = 1, beta = 0 for the paper and the authors' PLAD code alike.
    for perturbation in ("addmult", "add", "mult"):
        assert identity_targets(perturbation, target) == (1.0, 0.0)
    with pytest.raises(ValueError):
        identity_targets("linear", "both")


def test_identity_targets_set_the_direction_of_the_perturbation_near_identity():
    """Issue 17's finding, on the map itself: near the paper's target x~ - x lies along the
    all-ones vector; near the authors' it lies along alpha."""
    g = torch.Generator().manual_seed(0)
    x, noise_a, noise_b = (torch.randn(64, 50, generator=g, dtype=torch.float64) for _ in range(3))
    ones = torch.ones(50, dtype=torch.float64)
    paper = linear_perturbation(x, 1 + 0.05 * noise_a, 0.05 * noise_b) - x
    authors = linear_perturbation(x, 0.05 * noise_a, 1 + 0.05 * noise_b) - x
    along_ones = torch.nn.functional.cosine_similarity(paper, ones.expand_as(paper), dim=1).abs()
    along_alpha = torch.nn.functional.cosine_similarity(authors, noise_a, dim=1).abs()
    assert float(along_ones.min()) > 0.99 and float(along_alpha.min()) > 0.99
    assert float(torch.nn.functional.cosine_similarity(authors, ones.expand_as(authors), dim=1).abs().mean()) < 0.5


def test_limit_shift_against_a_plain_loop():
    """Each row's shift x~ - x is cut to max_shift * ||x|| when longer, direction kept; shorter
    ones and max_shift 0 leave x~ as it was; the gradient reaches x~ through the cut."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 30, generator=g, dtype=torch.float64)
    scales = torch.tensor([0.01, 0.1, 0.3, 0.5, 1.0, 2.0, 5.0, 20.0], dtype=torch.float64)
    shift = torch.randn(8, 30, generator=g, dtype=torch.float64)
    shift = shift / shift.norm(dim=1, keepdim=True) * x.norm(dim=1, keepdim=True) * scales[:, None]
    x_tilde = (x + shift).requires_grad_(True)
    limited = limit_shift(x, x_tilde, 0.5)
    plain_x_tilde = x_tilde.detach()
    for i in range(8):
        length, allowed = float((plain_x_tilde[i] - x[i]).norm()), 0.5 * float(x[i].norm())
        expected = plain_x_tilde[i] if length <= allowed else x[i] + (plain_x_tilde[i] - x[i]) * allowed / length
        assert torch.allclose(limited[i].detach(), expected, atol=1e-12)
    assert torch.equal(limit_shift(x, x_tilde, 0.0), x_tilde)
    limited.sum().backward()
    assert torch.all(torch.isfinite(x_tilde.grad)) and float(x_tilde.grad.abs().sum()) > 0


def test_perturbation_diagnostics_against_plain_loops():
    g = torch.Generator().manual_seed(1)
    x, x_tilde = torch.randn(5, 12, generator=g, dtype=torch.float64), torch.randn(5, 12, generator=g, dtype=torch.float64)
    figures = perturbation_diagnostics(x, x_tilde)
    shifts = [x_tilde[i] - x[i] for i in range(5)]
    cosine = lambda a, b: abs(float(a @ b / (a.norm() * b.norm())))
    assert math.isclose(float(figures["norm_ratio"]),
                        np.mean([float(x_tilde[i].norm() / x[i].norm()) for i in range(5)]), rel_tol=1e-12)
    assert math.isclose(float(figures["ones_cosine"]),
                        np.mean([cosine(s, torch.ones(12, dtype=torch.float64)) for s in shifts]), rel_tol=1e-12)
    assert math.isclose(float(figures["shift_cosine"]),
                        np.mean([cosine(shifts[i], shifts[j]) for i in range(5) for j in range(5) if i != j]),
                        rel_tol=1e-12)
    along_one_line = perturbation_diagnostics(x, x + torch.randn(5, 1, generator=g, dtype=torch.float64) * x[:1])
    assert math.isclose(float(along_one_line["shift_cosine"]), 1.0, rel_tol=1e-12)


def test_min_steps_adds_epochs_to_a_small_class_only():
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    head = paper(dim="native", epochs=2, lr=1e-3, batch_size=16, min_steps=7).fit(x)
    # 40 rows make 2 steps of 16 per epoch: 4 epochs for 7 steps.
    assert head.epochs_run_ == 4 and [r["epoch"] for r in head.history_] == [1, 2, 3, 4]
    # The same training as 4 epochs asked for: one one-cycle schedule over all of them.
    assert head.selected_epoch_ == 4
    assert head.history_ == paper(dim="native", epochs=4, lr=1e-3, batch_size=16).fit(x).history_
    assert PlumeHead(epochs=2, batch_size=16, min_steps=7).epochs_for(400) == 2
    assert PlumeHead(epochs=2, batch_size=16, min_steps=0).epochs_for(40) == 2
    with pytest.raises(PipelineError, match="min_steps must be an integer >= 0"):
        PlumeHead(min_steps=-1).fit(x)


def test_head_keeps_its_pseudo_anomalies_within_max_shift():
    """Through the head: with max_shift the training batches' ||x~|| / ||x|| stays within 1 + max_shift."""
    x = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    free = paper(dim="native", epochs=2, lr=1e-2, identity_target="authors").fit(x)
    limited = paper(dim="native", epochs=2, lr=1e-2, identity_target="authors", max_shift=0.05).fit(x)
    assert max(r["norm_ratio"] for r in free.history_) > 1.05
    assert max(r["norm_ratio"] for r in limited.history_) <= 1.05 + 1e-6
    with pytest.raises(PipelineError, match="max_shift must be a number >= 0"):
        PlumeHead(max_shift=-1).fit(x)


def cos(a, b, tau):
    a, b = a.detach(), b.detach()  # a plain number of the reference loop, outside the graph
    return float(a @ b / (a.norm() * b.norm())) / tau


def test_contrastive_loss_equals_equation_7_loop():
    z, z_tilde, _ = random_inputs(n=5, d=8, seed=4)
    tau, n = 0.5, 5
    total = 0.0
    for i in range(n):
        denominator = sum(math.exp(cos(z[i], z_tilde[l], tau)) + (l != i) * math.exp(cos(z[i], z[l], tau))
                          for l in range(n))
        total += sum(-math.log(math.exp(cos(z[i], z[j], tau)) / denominator) for j in range(n) if j != i) / (n - 1)
    assert contrastive_loss(z, z_tilde, tau).item() == pytest.approx(total / n, rel=1e-10)


def test_mean_contrastive_loss_equals_equation_9_loop():
    z, z_tilde, _ = random_inputs(n=5, d=8, seed=5)
    tau = 0.5
    z_mean, z_tilde_mean = z.mean(0), z_tilde.mean(0)
    total = sum(-math.log(math.exp(cos(v, z_mean, tau)) / (math.exp(cos(v, z_mean, tau)) + math.exp(cos(v, z_tilde_mean, tau))))
                for v in z)
    assert mean_contrastive_loss(z, z_tilde, tau).item() == pytest.approx(total / 5, rel=1e-10)


def test_authors_contrastive_form_puts_each_own_pseudo_anomaly_against_all_normals():
    z, z_tilde, _ = random_inputs(n=5, d=8, seed=7)
    tau, n = 0.5, 5
    total = 0.0
    for i in range(n):
        denominator = sum(math.exp(cos(z[k], z_tilde[i], tau)) + (k != i) * math.exp(cos(z[i], z[k], tau))
                          for k in range(n))
        total += sum(-math.log(math.exp(cos(z[i], z[j], tau)) / denominator) for j in range(n) if j != i) / (n - 1)
    assert contrastive_loss(z, z_tilde, tau, "authors").item() == pytest.approx(total / n, rel=1e-10)
    assert contrastive_loss(z, z_tilde, tau, "paper").item() != pytest.approx(total / n, rel=1e-6)


def test_authors_mean_form_is_a_difference_of_cosines_without_tau():
    z, z_tilde, _ = random_inputs(n=5, d=8, seed=8)
    z_mean, z_tilde_mean = z.mean(0), z_tilde.mean(0)
    expected = np.mean([cos(v, z_tilde_mean, 1.0) - cos(v, z_mean, 1.0) for v in z])
    for tau in (0.1, 0.5):
        assert mean_contrastive_loss(z, z_tilde, tau, "authors").item() == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError):
        mean_contrastive_loss(z, z_tilde, 0.5, "lightning")


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
    head = paper(perturbation=perturbation, guidance=guidance, epochs=6, dim="native", batch_mode="joint")
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
    head = paper(seed=3, **config).fit(train)
    again = paper(seed=3, **config).fit(train)
    other = paper(seed=4, **config).fit(train)
    np.testing.assert_array_equal(head.score_samples(test), again.score_samples(test))
    assert not np.array_equal(head.score_samples(test), other.score_samples(test))
    with torch.no_grad():
        head.classifier_.eval(), head.input_norm_.eval()
        logits = head.classifier_(head.input_norm_(torch.as_tensor(test)))
    np.testing.assert_allclose(head.score_samples(test), -logits.numpy(), rtol=1e-6)


def test_lightning_exponential_rates_step_as_its_scheduler_does():
    rates = lightning_exponential_rates(1e-8, 1.0, 100)
    assert len(rates) == 100 and rates[0] == 1e-8 and rates[-1] == pytest.approx(1.0, rel=1e-12)
    # Step k >= 1 is at (k + 1) / 100 of the way in log rate: step 1 already at 2 / 100.
    assert rates[1] == pytest.approx(1e-8 * 1e8 ** 0.02, rel=1e-12)
    ratios = np.diff(np.log(rates[1:]))
    np.testing.assert_allclose(ratios, np.log(1e8) / 100, rtol=1e-9)


def test_debiased_moving_average_against_its_closed_form():
    losses = list(np.random.default_rng(0).uniform(0.5, 2.0, size=30))
    beta = 0.98
    expected = [sum((1 - beta) * beta ** (k - i) * losses[i] for i in range(k + 1)) / (1 - beta ** (k + 2))
                for k in range(len(losses))]
    np.testing.assert_allclose(debiased_moving_average(losses, beta), expected, rtol=1e-12)


def test_steepest_descent_rate_against_plain_finite_differences():
    rng = np.random.default_rng(1)
    rates = list(np.geomspace(1e-8, 1, 60))
    smoothed = list(np.cumsum(rng.normal(size=60)))
    smoothed[30] = float("nan")  # a non-finite point is dropped; the rates stay the ones measured

    def plain(rates, smoothed, skip_begin=10, skip_end=1):
        kept = [k for k in range(skip_begin, len(smoothed) - skip_end) if math.isfinite(smoothed[k])]
        values = [smoothed[k] for k in kept]
        slopes = [values[1] - values[0]]
        slopes += [(values[i + 1] - values[i - 1]) / 2 for i in range(1, len(values) - 1)]
        slopes.append(values[-1] - values[-2])
        return rates[kept[min(range(len(slopes)), key=slopes.__getitem__)]]

    assert steepest_descent_rate(rates, smoothed) == plain(rates, smoothed)
    # A curve whose steepest fall is known: flat, a cliff between points 40 and 41, flat.
    cliff = [1.0] * 41 + [0.0] * 19
    assert steepest_descent_rate(rates, cliff) in (rates[40], rates[41])
    # The first ten points are skipped however steep; too short a curve gives no rate.
    early_cliff = [100.0 - 10 * k for k in range(10)] + [1.0] * 20 + [0.5] * 30
    assert steepest_descent_rate(rates, early_cliff) in (rates[29], rates[30])
    assert steepest_descent_rate(rates[:11], smoothed[:11]) is None


@pytest.mark.parametrize("rule,low,high", [("lowest-loss", 1e-7, 0.1), ("steepest", 1e-8, 1.0)])
def test_lr_range_test_rules_pick_a_rate_and_restore_the_modules(rule, low, high):
    train, _, _ = subspace_data()
    head = paper(dim="native")
    perturbator = head._build(32)
    before = [p.clone() for m in (head.classifier_, perturbator) for p in m.parameters()]
    lr = lr_range_test(head, perturbator, torch.as_tensor(train), 32, torch.Generator().manual_seed(0), rule,
                       steps=40)
    assert low <= lr <= high
    after = [p for m in (head.classifier_, perturbator) for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_bad_configurations_are_clear_errors():
    with pytest.raises(PipelineError, match="perturbation must be one of"):
        PlumeHead(perturbation="rotate").fit(np.zeros((4, 8), np.float32))
    with pytest.raises(PipelineError, match="lr must be a number > 0, or lowest-loss or steepest, not 'auto'"):
        PlumeHead(lr="auto").fit(np.zeros((4, 8), np.float32))
    with pytest.raises(PipelineError, match="identity_target must be one of paper, authors"):
        PlumeHead(identity_target="both").fit(np.zeros((4, 8), np.float32))
    with pytest.raises(PipelineError, match="batch_size must be an integer >= 2"):
        PlumeHead(batch_size=1).fit(np.zeros((4, 8), np.float32))
    with pytest.raises(PipelineError, match="at least 2 training"):
        PlumeHead(dim="native").fit(np.zeros((1, 8), np.float32))
    head = paper(dim="native", epochs=1).fit(np.random.rand(8, 8).astype(np.float32))
    with pytest.raises(PipelineError, match="trained on 8-d"):
        head.score_samples(np.zeros((3, 5), np.float32))


def test_plume_command_writes_final_and_best_epoch_metrics_and_curves(synthetic_cache, tmp_path):
    from pipeline.commands.plume import main

    metrics, plots = tmp_path / "plume.json", tmp_path / "plots"
    # --dim 16: the classifier on features pooled to 16 entries keeps the four range tests quick.
    result = CliRunner().invoke(main, ["--cache", str(synthetic_cache.path), "--epochs", "2", "--min-steps", "0", "--dim", "16",
                                       "--seeds", "2", "--classes", "0,1", "--lr", "steepest",
                                       "--identity-target", "authors", "--guidance-form", "authors",
                                       "--metrics", str(metrics), "--plots", str(plots),
                                       "--curves", str(plots / "curves")])
    assert result.exit_code == 0, result.output
    payload = metrics_file.read(metrics)
    # The rate each class and seed trained at is a number in the metrics file; the settings beside it.
    numbers = json.loads(metrics.read_text())
    for name in payload["per_class"]:
        rates = numbers["per_class"][name]["lr_used"]
        assert set(rates) == {"seed_0", "seed_1"} and all(1e-8 <= r <= 1 for r in rates.values())
    about = json.loads(metrics_file.sidecar_path(metrics).read_text())["about"]
    assert {k: about[k] for k in ("identity_target", "guidance_form", "lr", "seed_list", "device")} == {
        "identity_target": "authors", "guidance_form": "authors", "lr": "steepest range test", "seed_list": [0, 1],
        "device": "cpu"}
    assert about["classifier_input_dim"] == 16 and about["dim"] == 16
    assert set(payload["per_class"]) == {synthetic_cache.classes[0], synthetic_cache.classes[1]}
    for m in [payload["mean"], *payload["per_class"].values()]:
        assert {"auroc", "auroc_std", "best_epoch_auroc", "best_epoch_auroc_std", "aupr", "fpr_at_95_tpr"} <= set(m)
        assert m["best_epoch_auroc"] >= m["auroc"] - 1e-9 or m["auroc_std"] > 0
    assert payload["about"]["head"] == "plume" and payload["about"]["seeds"] == 2
    curves = json.loads((plots / "curves" / f"train_{synthetic_cache.classes[0]}.json").read_text())
    assert [(c["seed"], c["epoch"]) for c in curves] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert "best-epoch AUROC" in result.output


def test_plume_command_help_and_bad_input(synthetic_cache):
    from pipeline.commands.plume import main

    runner = CliRunner()
    help_text = runner.invoke(main, ["--help"]).output
    assert "--perturbation" in help_text and "range test" in help_text and "--identity-target" in help_text
    bad = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--lr", "fast"])
    assert bad.exit_code == 2 and "lr must be a number > 0, or lowest-loss or steepest, not 'fast'" in bad.output
    bad = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--epochs", "1", "--min-steps", "0", "--dim", "native",
                               "--expect", "backbone.name=resnet50"])
    assert bad.exit_code == 1 and "Traceback" not in bad.output


PAPER_EQ1 = {"batch_mode": "joint", "identity_target": "paper", "identity_loss": "sum", "guidance_form": "paper",
             "lr": "lowest-loss", "val_fraction": 0.0, "select": "final", "max_shift": 0.0, "min_steps": 0,
             "epochs": 100, "dim": 3072, "ema": 0.0, "lam": 5.0, "batch_size": 32}


def test_paper_preset_is_eq_1_taken_literally_and_options_given_win(synthetic_cache, tmp_path):
    """PlumeHead.preset("paper") and --preset paper give the paper's configuration, where the
    defaults (params.yaml's) differ from it; a setting given on top (a keyword, an option) wins."""
    from pipeline.commands.plume import main

    assert {k: getattr(PlumeHead.preset("paper"), k) for k in PAPER_EQ1} == PAPER_EQ1
    assert {k: getattr(PlumeHead(), k) for k in PAPER_EQ1} != PAPER_EQ1
    assert PlumeHead.preset("paper", epochs=3).epochs == 3 and PlumeHead.preset("paper", epochs=3).dim == 3072
    with pytest.raises(PipelineError, match="no preset 'eq1'; it has: paper, authors"):
        PlumeHead.preset("eq1")
    metrics = tmp_path / "paper.json"
    # The range test and D = 3072 are the slow part of the paper's run: given here, they win over the preset.
    result = CliRunner().invoke(main, ["--cache", str(synthetic_cache.path), "--preset", "paper", "--epochs", "1",
                                       "--dim", "16", "--lr", "1e-3", "--classes", "0", "--metrics", str(metrics)])
    assert result.exit_code == 0, result.output
    about = json.loads(metrics_file.sidecar_path(metrics).read_text())["about"]
    assert {k: about[k] for k in PAPER_EQ1} == {**PAPER_EQ1, "epochs": 1, "dim": 16, "lr": 1e-3}
    assert about["auroc_epoch"] == "final epoch"


def test_ablation_command_lays_out_table_1c_with_knn_and_paper_columns(synthetic_cache, tmp_path):
    from pipeline.commands.knn import main as knn_main
    from stages.plume_ablation import main

    runner = CliRunner()
    knn_metrics = tmp_path / "knn.json"
    assert runner.invoke(knn_main, ["--cache", str(synthetic_cache.path), "--classes", "0,1",
                                    "--metrics", str(knn_metrics)]).exit_code == 0
    table = tmp_path / "table.md"
    result = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--epochs", "1", "--min-steps", "0", "--dim", "native",
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
    # A variant run apart by stages.plume (here with 2 seeds) joins the table, with its own spread.
    from pipeline.commands.plume import main as plume_main
    single = tmp_path / "linear_mean.json"
    assert runner.invoke(plume_main, ["--cache", str(synthetic_cache.path), "--epochs", "1", "--min-steps", "0", "--dim", "native",
                                      "--lr", "1e-3", "--classes", "0,1", "--seeds", "2", "--guidance", "mean",
                                      "--metrics", str(single)]).exit_code == 0
    combined = runner.invoke(report_main, ["plume-table", str(tmp_path / "abl.json"), str(single)])
    assert combined.exit_code == 0, combined.output
    lines = [line for line in combined.output.splitlines() if line.startswith("| ")]
    assert lines[3].startswith("| LinearMap | mean |") and "±" in lines[3] and "±" not in lines[2]
    assert "seeds: gaussian/none 1, linear/contrastive 1, linear/mean 2" in combined.output
    # A kNN row from other features is refused, before any training.
    other = json.loads(metrics_file.sidecar_path(knn_metrics).read_text())
    other["about"]["preprocessing"] = "resize/bilinear/other"
    other_knn = tmp_path / "other_knn.json"
    other_knn.write_text(knn_metrics.read_text())
    metrics_file.sidecar_path(other_knn).write_text(json.dumps(other))
    refused = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--epochs", "1", "--min-steps", "0", "--classes", "0,1",
                                   "--knn-metrics", str(other_knn), "--metrics", str(tmp_path / "never.json")])
    assert refused.exit_code == 1 and "other features" in refused.output and "Traceback" not in refused.output
    assert not (tmp_path / "never.json").exists()


def test_published_column_matches_the_reference_file():
    from pipeline.report.heads.plume import plume_paper_mean

    assert plume_paper_mean("linear", "contrastive") == 83.4
    assert plume_paper_mean("gaussian", "none") == 77.5
    assert plume_paper_mean("add", "none") is None


# --- one whole training step against an independent re-computation of the authors' step ------

def _adaptive_average(x, size):
    """AdaptiveAvgPool1d over the last axis: bin i averages [floor(i L / size), ceil((i + 1) L / size))."""
    length = x.shape[1]
    return torch.stack([x[:, (i * length) // size:-(-(i + 1) * length // size)].mean(dim=1) for i in range(size)],
                       dim=1)


def _batch_norm(x, eps):
    mean = x.mean(0)
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(0) + eps)


def _leaky(x):
    return torch.where(x > 0, x, 0.01 * x)


def _cos(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def authors_training_step(raw, w, noise, dim, lam, gamma, phi, tau):
    """The authors' training step (rhermary/PLUME: AdaptativeFeatureRCSPLAD.forward,
    CosSimPLAD.training_step and misc/losses.py) with eta = nu = 0, as their CIFAR-10 script
    runs it, written out from their equations: separate classifier passes, (I + alpha beta^T)
    built per sample, noise_loss(alpha, beta) pulling alpha -> 0 and beta -> 1, their shifted-
    index contrastive loss and their mean-contrastive loss. ``w``: parameters by name."""
    n = len(raw)
    x = _batch_norm(_adaptive_average(raw, dim), 1e-5)
    hidden = _leaky(x @ w["fc1.weight"].T + w["fc1.bias"])
    mu, logvar = hidden @ w["fc2.weight"].T + w["fc2.bias"], hidden @ w["fc3.weight"].T + w["fc3.bias"]
    sample = mu + torch.exp(0.5 * logvar) * noise
    out = _leaky(sample @ w["fc4.weight"].T + w["fc4.bias"]) @ w["fc5.weight"].T + w["fc5.bias"]
    alpha, beta = out[:, :dim], out[:, dim:]
    matrices = torch.eye(dim, dtype=x.dtype) + alpha[:, :, None] * beta[:, None, :]
    anomalies = (matrices @ x[:, :, None])[:, :, 0]

    def classifier(v):  # DecClassifier1D: features after the second LeakyReLU, then a bias-free linear
        h = _leaky(_batch_norm(v @ w["f1.0.weight"].T, 1e-4))
        features = _leaky(_batch_norm(h @ w["f1.3.weight"].T, 1e-4))
        return (features @ w["f2.weight"].T)[:, 0], features

    logit_normal, z = classifier(x)            # normal batch alone
    logit_anomalies, z_tilde = classifier(anomalies)  # pseudo-anomaly batch alone
    noise_loss = (alpha ** 2).mean() + ((beta - 1) ** 2).mean()
    classif = -torch.log(torch.sigmoid(logit_normal)).mean() - torch.log(1 - torch.sigmoid(logit_anomalies)).mean()
    kl = 0.5 * (torch.exp(logvar) + mu ** 2 - 1 - logvar).sum() / n

    def shifted(set1, set2):  # entry [s, j] = cos(set1[(s + j) mod n], set2[j])
        return torch.stack([torch.stack([_cos(set1[(s + j) % n], set2[j]) for j in range(n)]) for s in range(n)])

    normal_sims, anomaly_sims = shifted(z, z)[1:] / tau, shifted(z, z_tilde) / tau
    contrastive = torch.log(anomaly_sims.exp().sum(0) + normal_sims.exp().sum(0)).mean() - normal_sims.mean()
    # Their cosine similarity runs over dim 2 of (n, 512) against (1, 1, 512): a (1, n) result, whose
    # log-sum-exp over dim 0 (one element) is the similarity itself.
    to_anomaly_mean = _cos(z[None], z_tilde.mean(0)[None, None])
    mean_contrastive = torch.log(to_anomaly_mean.exp().sum(0)).mean() - _cos(z[None], z.mean(0)[None, None]).mean()
    total = classif + kl + lam * noise_loss + gamma * contrastive + phi * mean_contrastive
    return {"loss": total, "ce": classif, "identity": noise_loss, "kl": kl,
            "guidance": contrastive if gamma else mean_contrastive}


def head_and_reference_step(guidance, n=6, in_dim=12, dim=16, seed=0, **overrides):
    """The head's losses and gradients for one batch, and the authors' step on the same batch,
    parameters and reparametrisation noise (float64). The head is the ``authors`` preset: this
    re-computation is what checks that the preset is the authors' step."""
    head = PlumeHead.preset("authors", perturbation="linear", guidance=guidance, dim=dim, seed=seed, **overrides)
    assert (head.lam, head.nu, head.gamma, head.tau) == (5.0, 1.0, 1.0, 0.5)  # what the reference computes with
    perturbator = head._build(in_dim)
    modules = {"": perturbator.double(), "classifier": head.classifier_.double()}
    head.input_norm_.double()
    raw = torch.randn(n, in_dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64) * 3 + 1
    torch.manual_seed(123)
    losses = head._losses(raw, perturbator)
    losses["loss"].backward()
    head_grads = {name: p.grad for m in modules.values() for name, p in m.named_parameters()}

    weights = {name: p.detach().clone().requires_grad_(True) for m in modules.values()
               for name, p in m.named_parameters()}
    torch.manual_seed(123)
    noise = torch.randn(n, dim, dtype=torch.float64)  # the same draw as the head's randn_like(mu)
    reference = authors_training_step(raw, weights, noise, dim, lam=5.0,
                                      gamma=1.0 if guidance == "contrastive" else 0.0,
                                      phi=1.0 if guidance == "mean" else 0.0, tau=0.5)
    reference_grads = dict(zip(weights, torch.autograd.grad(reference["loss"], list(weights.values()))))
    return losses, head_grads, reference, reference_grads


@pytest.mark.parametrize("guidance", ["contrastive", "mean"])
def test_one_training_step_equals_the_authors_step_in_losses_and_gradients(guidance):
    losses, head_grads, reference, reference_grads = head_and_reference_step(guidance)
    for name in ("loss", "ce", "identity", "kl", "guidance"):
        torch.testing.assert_close(losses[name].detach(), reference[name].detach(), rtol=1e-10, atol=1e-12)
    assert set(head_grads) == set(reference_grads) and len(head_grads) == 13  # 5 VAE layers with biases, 3 classifier layers
    for name, grad in head_grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("change,term", [({"identity_target": "paper"}, "identity"),
                                          ({"identity_loss": "sum"}, "identity"),
                                          ({"batch_mode": "joint"}, "ce"),
                                          ({"guidance_form": "paper"}, "guidance")])
def test_each_authors_setting_matters_to_the_step(change, term):
    """The reference test above can fail: moving any one setting off the authors' changes its term."""
    losses, _, reference, _ = head_and_reference_step("contrastive", **change)
    assert abs(losses[term].item() - reference[term].item()) > 1e-6
