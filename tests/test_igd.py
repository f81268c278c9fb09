"""IGD: the equations against plain reference computations, then the head, its command and
its rows in the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from pipeline import metrics_file
from pipeline.errors import PipelineError
from pipeline.heads.igd.head import IGDHead
from pipeline.heads.igd.model import (Critic, Standardise, adversarial_term, critic_loss, decoder, gaussian_loss,
                                      gaussian_statistics, input_scale, interpolate, mlp, normal_probability,
                                      partners, reconstruction_error)

SMALL = dict(epochs=3, hidden=16, latent_dim=4, batch_size=16, lr=1e-3)


def codes(n=7, d=5, seed=0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- the equations ------------------------------------------------------------------------------

def test_per_dimension_standardisation_floors_dead_channels_at_the_median_std():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)) * np.array([1.0, 2.0, 3.0, 4.0, 0.0, 1e-8]) + 5
    mean, scale = input_scale(torch.as_tensor(x), "dimension")
    std = x.std(0, ddof=1)
    floor = np.median([s for s in std if s > 0])  # the 1e-8 channel varies, a little
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(scale.numpy(), np.maximum(std, floor), rtol=1e-5)
    assert scale[4] == scale[5] == pytest.approx(floor)  # dead and nearly dead: a typical channel's scale
    # A test value on the dead channel stays of the order of the others, not 1e6 times larger.
    norm = Standardise(6)
    norm.set_statistics(torch.as_tensor(x), "dimension")
    assert abs(float(norm(torch.as_tensor(x[:1] + np.eye(6)[4], dtype=torch.float32))[0, 4])) < 1
    mean, scale = input_scale(torch.as_tensor(x), "global")
    np.testing.assert_allclose(scale.numpy(), np.full(6, np.sqrt((std ** 2).mean())), rtol=1e-5)
    mean, scale = input_scale(torch.as_tensor(x), "none")
    assert not mean.any() and (scale == 1).all()


def test_e_step_and_gaussian_classifier_match_eq_3_5_8_by_loops():
    z, mu_given = codes(), codes(1, 5, 1)[0]
    mu, sigma2 = gaussian_statistics(z)
    mean = [sum(float(z[i, j]) for i in range(7)) / 7 for j in range(5)]
    spread = sum(sum((float(z[i, j]) - mean[j]) ** 2 for j in range(5)) for i in range(7)) / 7
    np.testing.assert_allclose(mu.numpy(), mean, rtol=1e-12)
    assert float(sigma2) == pytest.approx(spread, rel=1e-12)
    p = normal_probability(z, mu_given, sigma2)
    for i in range(7):
        distance = sum((float(z[i, j]) - float(mu_given[j])) ** 2 for j in range(5))
        assert float(p[i]) == pytest.approx(np.exp(-distance / spread), rel=1e-12)
        assert float(gaussian_loss(z, mu_given, sigma2)[i]) == pytest.approx(1 - np.exp(-distance / spread), rel=1e-12)
    # A collapsed encoder: a finite descriptor, every sample at the centre.
    _, flat = gaussian_statistics(torch.ones(4, 3, dtype=torch.float64))
    assert 0 < float(flat) and torch.equal(gaussian_loss(torch.ones(4, 3, dtype=torch.float64), torch.ones(3), flat),
                                           torch.zeros(4, dtype=torch.float64))


def test_reconstruction_errors_are_per_sample_means_over_the_entries():
    x, x_hat = codes(), codes(seed=2)
    mae = [sum(abs(float(x[i, j] - x_hat[i, j])) for j in range(5)) / 5 for i in range(7)]
    mse = [sum(float(x[i, j] - x_hat[i, j]) ** 2 for j in range(5)) / 5 for i in range(7)]
    np.testing.assert_allclose(reconstruction_error(x, x_hat, "mae").numpy(), mae, rtol=1e-12)
    np.testing.assert_allclose(reconstruction_error(x, x_hat, "mse").numpy(), mse, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown reconstruction"):
        reconstruction_error(x, x_hat, "ssim")


def test_interpolation_pairs_each_code_with_another_one_as_eq_9():
    z, alpha = codes(), torch.rand(7, 1, dtype=torch.float64) * 0.5
    mixed = interpolate(z, alpha)
    for i in range(7):
        other = (i - 1) % 7
        assert other != i and torch.equal(partners(z)[i], z[other])
        torch.testing.assert_close(mixed[i], alpha[i, 0] * z[i] + (1 - alpha[i, 0]) * z[other], rtol=1e-12, atol=0)


def test_critic_loss_and_adversarial_term_match_eq_10_and_11():
    on_interpolated, alpha, on_mixed = torch.rand(6, dtype=torch.float64), torch.rand(6, 1, dtype=torch.float64) / 2, \
        torch.rand(6, dtype=torch.float64)
    expected = sum((float(on_interpolated[i]) - float(alpha[i, 0])) ** 2 + float(on_mixed[i]) ** 2 for i in range(6)) / 6
    assert float(critic_loss(on_interpolated, alpha, on_mixed)) == pytest.approx(expected, rel=1e-12)
    assert float(adversarial_term(on_interpolated)) == pytest.approx(
        sum(float(v) ** 2 for v in on_interpolated) / 6, rel=1e-12)
    critic = Critic(5, 8)
    out = critic(torch.randn(3, 5))
    assert out.shape == (3,) and ((0 < out) & (out < 1)).all()
    assert len(mlp(5, 0, 2)) == 1 and len(mlp(5, 8, 2)) == 3  # hidden 0: one linear layer


def test_the_decoder_reconstructs_the_same_from_codes_of_any_scale():
    """The batch norm on the decoder's first layer: codes shrunk towards their mean by the
    Gaussian term decode (in training, with batch statistics) as they did before shrinking."""
    for hidden in (8, 0):
        g = decoder(4, hidden, 6).train()
        z = torch.randn(10, 4, dtype=torch.float32)
        torch.testing.assert_close(g(0.1 * z), g(z), rtol=1e-2, atol=1e-2)
        assert not torch.allclose(g(0.1 * z + 0.5 * torch.randn(10, 4)), g(z), rtol=1e-2, atol=1e-2)


# --- the head -----------------------------------------------------------------------------------

def subspace_data(seed=0, d=32, rank=4):
    """Normal data on a rank-4 subspace; anomalies leave it."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]

    def normal(n):
        return (rng.normal(size=(n, rank)) * 3) @ basis[:, :rank].T + 0.05 * rng.normal(size=(n, d)) + 1

    train = normal(512).astype(np.float32)
    anomalies = normal(200) + rng.normal(size=(200, d - rank)) @ basis[:, rank:].T
    test = np.concatenate([normal(200), anomalies]).astype(np.float32)
    return train, test, np.r_[np.zeros(200), np.ones(200)]


@pytest.mark.parametrize("hidden", [64, 0])
def test_head_finds_points_off_the_normal_subspace(hidden):
    train, test, is_anomaly = subspace_data()
    head = IGDHead(epochs=5, hidden=hidden, latent_dim=8, lr=1e-3)
    monitored = []  # the evaluation's callback: the head never sees the test set itself
    head.fit(train, callback=lambda h, r: monitored.append(roc_auc_score(is_anomaly, h.score_samples(test))))
    assert [r["epoch"] for r in head.history_] == list(range(1, 6)) and len(monitored) == 5
    assert {"loss", "gaussian", "reconstruction", "adversarial", "critic", "sigma2"} <= set(head.history_[0])
    final = roc_auc_score(is_anomaly, head.score_samples(test))
    assert final == pytest.approx(monitored[-1])  # the callback saw the head as it ends
    assert final > 0.9


def numpy_mlp(x: np.ndarray, layers: torch.nn.Sequential) -> np.ndarray:
    """The network's forward pass from its weights, in float64 NumPy (batch norm with its
    running statistics, as when scoring)."""
    def array(t: torch.Tensor) -> np.ndarray:
        return t.detach().double().numpy()

    for layer in layers:
        if isinstance(layer, torch.nn.Linear):
            x = x @ array(layer.weight).T + array(layer.bias)
        elif isinstance(layer, torch.nn.BatchNorm1d):
            x = (x - array(layer.running_mean)) / np.sqrt(array(layer.running_var) + layer.eps)
            x = x * array(layer.weight) + array(layer.bias)
        else:
            x = np.where(x > 0, x, 0.2 * x)
    return x


def test_score_is_reconstruction_plus_gaussian_loss_with_the_last_e_step():
    train, test, _ = subspace_data(seed=1)
    head = IGDHead(**SMALL).fit(train)

    def standardise(a: np.ndarray) -> np.ndarray:
        return (a - head.standardise_.mean.double().numpy()) / head.standardise_.scale.double().numpy()

    # The E-step after the last epoch: mean and mean squared distance of the training codes.
    z_train = numpy_mlp(standardise(train.astype(np.float64)), head.encoder_)
    mu = z_train.mean(0)
    sigma2 = ((z_train - mu) ** 2).sum(1).mean()
    np.testing.assert_allclose(head.mu_.numpy(), mu, rtol=1e-4, atol=1e-5)
    assert float(head.sigma2_) == pytest.approx(sigma2, rel=1e-4)
    x = standardise(test.astype(np.float64))
    z = numpy_mlp(x, head.encoder_)
    expected = np.abs(x - numpy_mlp(z, head.decoder_)).mean(1) + 1 - np.exp(-((z - mu) ** 2).sum(1) / sigma2)
    scores = head.score_samples(test)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)


def test_clone_and_fit_give_identical_scores_and_another_seed_differs():
    train, test, _ = subspace_data(seed=2)
    head = IGDHead(seed=3, **SMALL).fit(train)
    twin = clone(head).fit(train)
    np.testing.assert_array_equal(head.score_samples(test), twin.score_samples(test))
    assert head.history_ == twin.history_
    other = clone(head).set_params(seed=4).fit(train)
    assert not np.array_equal(head.score_samples(test), other.score_samples(test))


def test_the_critic_step_leaves_the_autoencoder_alone():
    """l_d trains the critic only (its inputs are detached): with lambda_2 = 0 and a Gaussian
    loss of zero gradient, the autoencoder's parameters stay where they were and the critic's
    backward pass leaves no gradient on them."""
    train, _, _ = subspace_data(seed=3)
    head = IGDHead(**{**SMALL, "epochs": 1})
    head.fit(train)
    critic = Critic(32, 16)
    before = [p.detach().clone() for p in [*head.encoder_.parameters(), *head.decoder_.parameters()]]
    critic_before = [p.detach().clone() for p in critic.parameters()]
    head.lambda_2, head.sigma2_ = 0.0, torch.tensor(float("inf"))  # l_h = 1 - exp(0): no gradient
    optimiser = torch.optim.Adam([*head.encoder_.parameters(), *head.decoder_.parameters()], lr=0.1)
    optimiser_critic = torch.optim.Adam(critic.parameters(), lr=0.1)
    x = head.standardise_(torch.as_tensor(train[:16]))
    head._m_step(x, critic, optimiser, optimiser_critic, torch.Generator().manual_seed(0))
    after = [*head.encoder_.parameters(), *head.decoder_.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(p.grad is None or not p.grad.any() for p in after)
    assert not all(torch.equal(a, b) for a, b in zip(critic_before, critic.parameters()))


def test_bad_configurations_and_inputs_are_clear_errors():
    data = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    with pytest.raises(PipelineError, match="reconstruction must be one of"):
        IGDHead(reconstruction="ssim").fit(data)
    with pytest.raises(PipelineError, match="batch_size must be an integer >= 2"):
        IGDHead(batch_size=1).fit(data)
    with pytest.raises(PipelineError, match="at least 2 training"):
        IGDHead().fit(data[:1])
    with pytest.raises(PipelineError, match="NaN"):
        IGDHead().fit(np.full((4, 6), np.nan, np.float32))
    with pytest.raises(PipelineError, match="fit the IGD head"):
        IGDHead().score_samples(data)
    head = IGDHead(**{**SMALL, "epochs": 1}).fit(data)
    with pytest.raises(PipelineError, match="trained on 6-d"):
        head.score_samples(np.zeros((3, 5), np.float32))


# --- the command and the report -----------------------------------------------------------------

def test_curve_epochs_score_the_test_set_only_after_those_epochs(synthetic_cache, tmp_path):
    """--curve-epochs: every epoch's training record is kept, the test AUROC only after the chosen
    epochs, and the best-epoch figure is over those; without --curves the option is refused."""
    from pipeline.commands.igd import main

    metrics, curves = tmp_path / "igd.json", tmp_path / "curves"
    result = CliRunner().invoke(main, ["--cache", str(synthetic_cache.path), "--epochs", "3", "--hidden", "16",
                                       "--classes", "0", "--metrics", str(metrics), "--curves", str(curves),
                                       "--curve-epochs", "2,3"])
    assert result.exit_code == 0, result.output
    name = synthetic_cache.classes[0]
    training = json.loads((curves / f"train_{name}.json").read_text())
    assert [r["epoch"] for r in training] == [1, 2, 3]
    assert ["test_auroc" in r for r in training] == [False, True, True]
    payload = metrics_file.read(metrics)
    assert payload["per_class"][name]["best_epoch"] in (2, 3)
    assert payload["about"]["curve_epochs"] == [2, 3] and "scored epochs 2, 3 only" in payload["about"]["auroc_is"]
    refused = CliRunner().invoke(main, ["--cache", str(synthetic_cache.path), "--metrics", str(tmp_path / "x.json"),
                                        "--curve-epochs", "2"])
    assert refused.exit_code != 0 and "--curves" in refused.output


def test_igd_command_writes_final_and_best_epoch_metrics_curves_and_report_rows(synthetic_cache, tmp_path):
    from pipeline.commands.igd import main
    from pipeline.report.command import main as report_main

    metrics, plots, curves = tmp_path / "metrics" / "igd.json", tmp_path / "plots" / "igd", tmp_path / "plots" / "igd_training"
    result = CliRunner().invoke(main, ["--cache", str(synthetic_cache.path), "--epochs", "2", "--hidden", "16",
                                       "--seeds", "2", "--classes", "0,1", "--metrics", str(metrics),
                                       "--plots", str(plots), "--curves", str(curves)])
    assert result.exit_code == 0, result.output
    payload = metrics_file.read(metrics)
    names = [synthetic_cache.classes[0], synthetic_cache.classes[1]]
    assert list(payload["per_class"]) == names
    for m in [payload["mean"], *payload["per_class"].values()]:
        assert {"auroc", "auroc_std", "best_epoch_auroc", "best_epoch_auroc_std", "aupr", "fpr_at_95_tpr"} <= set(m)
    about = payload["about"]
    assert about["head"] == "igd" and about["seeds"] == 2 and about["epochs"] == 2 and "peeks" in about["auroc_is"]
    assert about["lambda_3"] == 0.1 and about["latent_dim"] == 128 and "seed" not in about
    training = json.loads((curves / f"train_{names[0]}.json").read_text())
    assert [(c["seed"], c["epoch"]) for c in training] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert {"test_auroc", "gaussian", "reconstruction", "critic"} <= set(training[0])
    assert "best-epoch AUROC" in result.output

    built = CliRunner().invoke(report_main, ["build", str(metrics), "--out-md", str(tmp_path / "r.md"),
                                             "--out-html", str(tmp_path / "r.html")])
    assert built.exit_code == 0, built.output
    markdown = (tmp_path / "r.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| IGD |")]
    # Three tables (AUROC, AUPR, FPR@95%TPR), each with the final-epoch row; the best epoch, named as
    # peeking, in the AUROC table (AUPR and FPR are the final model's).
    assert sum("final epoch" in r for r in rows) == 3
    best = [r for r in rows if "best epoch (picked on the test set)" in r]
    assert best and re.search(r"\*\*\d+\.\d ± \d+\.\d\*\*", best[0])
    page = (tmp_path / "r.html").read_text()
    assert "IGD (MLP encoder, mae + Gaussian score): test AUROC per epoch" in page


def test_igd_command_help_and_bad_input(synthetic_cache):
    from pipeline.commands.igd import main

    runner = CliRunner()
    help_text = " ".join(runner.invoke(main, ["--help"]).output.split())
    for option in ("--lambda-3", "--alpha-max", "--standardise", "--curves", "Paper: 128", "reads the test set", "MS-SSIM"):
        assert option in help_text
    bad = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--reconstruction", "ssim"])
    assert bad.exit_code == 2 and "ssim" in bad.output
    bad = runner.invoke(main, ["--cache", str(synthetic_cache.path), "--epochs", "1",
                               "--expect", "backbone.name=resnet50"])
    assert bad.exit_code == 1 and "Traceback" not in bad.output


def test_published_figure_is_the_papers_imagenet_cifar10_mean():
    from pipeline.report.heads.igd import igd_paper

    reference = json.loads((Path(__file__).resolve().parents[1] / "pipeline" / "report" / "paper_results.json")
                           .read_text())
    assert igd_paper() == pytest.approx(100 * reference["igd"]["mean_auc_fraction"]["cifar10_imagenet_pretrained"])
