"""PLUME's torch modules and losses (PLUME paper, section 3 and appendix table 3).

Plain ``nn.Module``s and functions; the training loop lives in ``pipeline.heads.plume``.
Notation: ``x`` is a batch (N, D) of normalised features, ``alpha`` and ``beta`` are the
perturbator's outputs, ``z`` the classifier's 512-d embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.heads.plume import GUIDANCE_FORMS, GUIDANCES, IDENTITY_LOSSES, IDENTITY_TARGETS, PERTURBATIONS


class InputNorm(nn.Module):
    """Adaptive average pooling of the cached vector to ``dim`` entries (the paper pools 2048
    -> 3072), then ``BatchNorm1d(affine=False)``. Part of the saved classifier: its running
    statistics decide the test-time input."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.in_dim, self.dim = in_dim, dim
        self.norm = nn.BatchNorm1d(dim, affine=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.dim != self.in_dim:
            features = F.adaptive_avg_pool1d(features.unsqueeze(1), self.dim).squeeze(1)
        return self.norm(features)

    @property
    def invertible(self) -> bool:
        """Whether ``invert`` exists: no pooling to another size (which loses entries)."""
        return self.dim == self.in_dim

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """The cached features that eval-mode ``forward`` maps to ``x``: the running statistics undone."""
        if not self.invertible:
            raise ValueError(f"features pooled from {self.in_dim} to {self.dim} entries cannot be mapped back")
        return x * torch.sqrt(self.norm.running_var + self.norm.eps) + self.norm.running_mean


class Perturbator(nn.Module):
    """The VAE ``g`` of table 3: x -> (mu, logvar) -> z -> (alpha, beta).

    ``add`` and ``mult`` need only one of the two vectors, so their decoder outputs D
    values (appendix E.2); the missing one is returned as its identity value (beta = 0,
    alpha = 1), which keeps ``near_identity_loss`` the same for every perturbation.
    """

    def __init__(self, dim: int, perturbation: str = "linear") -> None:
        super().__init__()
        if perturbation not in PERTURBATIONS or perturbation == "gaussian":
            raise ValueError(f"no learnt perturbator for {perturbation!r}")
        self.perturbation = perturbation
        outputs = dim if perturbation in ("add", "mult") else 2 * dim
        self.fc1, self.fc2, self.fc3 = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.fc4, self.fc5 = nn.Linear(dim, dim), nn.Linear(dim, outputs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = F.leaky_relu(self.fc1(x))
        mu, logvar = self.fc2(hidden), self.fc3(hidden)
        sample = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        out = self.fc5(F.leaky_relu(self.fc4(sample)))
        if self.perturbation == "add":
            alpha, beta = torch.ones_like(out), out
        elif self.perturbation == "mult":
            alpha, beta = out, torch.zeros_like(out)
        else:
            alpha, beta = out.chunk(2, dim=1)
        return alpha, beta, mu, logvar


class Classifier(nn.Module):
    """The classifier ``f = f2 . f1`` of table 3; ``embed`` is f1 (the contrastive space)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.f1 = nn.Sequential(
            nn.Linear(dim, 1024, bias=False), nn.BatchNorm1d(1024, affine=False, eps=1e-4), nn.LeakyReLU(),
            nn.Linear(1024, 512, bias=False), nn.BatchNorm1d(512, affine=False, eps=1e-4), nn.LeakyReLU(),
        )
        self.f2 = nn.Linear(512, 1, bias=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.f1(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f2(self.f1(x)).squeeze(1)


def linear_perturbation(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``(I + alpha beta^T) x`` as the rank-one update ``x + alpha (beta . x)``: O(N D) time
    and memory instead of the O(N D^2) of building each D x D matrix."""
    return x + alpha * (beta * x).sum(dim=1, keepdim=True)


def explicit_linear_perturbation(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The same map with the D x D matrices built and applied by ``bmm``, as the authors' code
    does. Only for tests and the benchmark: N*D*D floats (1.2 GB at N=32, D=3072)."""
    eye = torch.eye(x.shape[1], device=x.device, dtype=x.dtype)
    matrices = eye + alpha.unsqueeze(2) * beta.unsqueeze(1)
    return torch.bmm(matrices, x.unsqueeze(2)).squeeze(2)


def perturb(x: torch.Tensor, perturbation: str, alpha: torch.Tensor | None = None, beta: torch.Tensor | None = None,
            noise_std: float | None = None) -> torch.Tensor:
    """The pseudo-anomalies of ``x``; ``noise_std`` (the gaussian perturbation's sigma) is the
    head's parameter, declared in settings.py, so it has no default here."""
    if perturbation == "linear":
        return linear_perturbation(x, alpha, beta)
    if perturbation in ("addmult", "add", "mult"):
        return alpha * x + beta
    if perturbation == "gaussian":
        if noise_std is None:
            raise ValueError("the gaussian perturbation needs noise_std")
        return x + noise_std * torch.randn_like(x)
    raise ValueError(f"unknown perturbation {perturbation!r}; choose from {', '.join(PERTURBATIONS)}")


def limit_shift(x: torch.Tensor, x_tilde: torch.Tensor, max_shift: float) -> torch.Tensor:
    """``x~`` pulled back along ``x~ - x`` wherever that shift is longer than ``max_shift * ||x||``
    (per row), to exactly that length; shorter shifts, and every shift when ``max_shift`` is 0,
    are left as they are. Differentiable: the perturbator still learns the shift's direction."""
    if not max_shift:
        return x_tilde
    shift = x_tilde - x
    limit = max_shift * x.norm(dim=1, keepdim=True)
    return x + shift * (limit / shift.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)


def identity_targets(perturbation: str, identity_target: str = "paper") -> tuple[float, float]:
    """The values (alpha, beta) the near-identity loss pulls towards.

    For the linear map (I + alpha beta^T) x, eq. 1 of the paper pulls alpha -> 1 and beta -> 0
    (``paper``); the authors' code passes its (alpha, beta) to a loss written for PLAD's
    (additive, multiplicative) noise and so pulls alpha -> 0 and beta -> 1 (``authors``). Both
    are the identity map, but near it x~ - x = alpha (beta . x) lies along the all-ones vector
    in the first case and along the learnt alpha in the second. For alpha * x + beta (addmult,
    add, mult) the identity is alpha = 1, beta = 0 in the paper and in the authors' PLAD code
    alike, so ``identity_target`` changes nothing there."""
    if identity_target not in IDENTITY_TARGETS:
        raise ValueError(f"unknown identity target {identity_target!r}; choose from {', '.join(IDENTITY_TARGETS)}")
    if perturbation == "linear" and identity_target == "authors":
        return 0.0, 1.0
    return 1.0, 0.0


def near_identity_loss(alpha: torch.Tensor, beta: torch.Tensor, reduction: str = "sum",
                       targets: tuple[float, float] = (1.0, 0.0)) -> torch.Tensor:
    """Eq. 1, ``||alpha - a||^2 + ||beta - b||^2`` per sample with (a, b) = ``targets``, mean
    over the batch (``sum``, the paper). ``mean`` is the authors' code: the sum of two
    ``mse_loss`` terms, each an element mean over the batch and the D entries (no halving)."""
    alpha_target, beta_target = targets
    per_entry = (alpha - alpha_target).square() + (beta - beta_target).square()
    if reduction == "sum":
        return per_entry.sum(dim=1).mean()
    if reduction == "mean":
        return per_entry.mean()  # = mse_loss(alpha, a) + mse_loss(beta, b)
    raise ValueError(f"unknown reduction {reduction!r}; use {' or '.join(IDENTITY_LOSSES)}")


def perturbation_diagnostics(x: torch.Tensor, x_tilde: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the pseudo-anomalies look like next to the normal batch (no gradient; batch means):
    ``norm_ratio``, ||x~|| / ||x||, how much the perturbation rescales a sample, which
    separate batches hide from the classifier (each is batch-normalised alone); and
    ``ones_cosine``, |cos(x~ - x, 1)|, how closely the perturbation follows the all-ones
    direction, where the paper's identity target (alpha -> 1, beta -> 0) puts it; and
    ``shift_cosine``, the mean |cos| between the shifts x~ - x of two different samples, how
    much the pseudo-anomalies of a batch share one direction (1: all along one line)."""
    x, x_tilde = x.detach(), x_tilde.detach()
    ratio = x_tilde.norm(dim=1) / x.norm(dim=1).clamp_min(1e-12)
    ones = torch.ones_like(x[:1])
    shifts = F.normalize(x_tilde - x, dim=1)
    n = len(x)
    pairs = (shifts @ shifts.T).abs().sum() - (shifts.square().sum(dim=1)).sum()  # the diagonal left out
    return {"norm_ratio": ratio.mean(), "ones_cosine": F.cosine_similarity(x_tilde - x, ones, dim=1).abs().mean(),
            "shift_cosine": pairs / max(n * (n - 1), 1)}


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Eq. 4, summed over dimensions, mean over the batch."""
    return 0.5 * (logvar.exp() + mu.square() - 1 - logvar).sum(dim=1).mean()


def _similarities(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / tau


def contrastive_loss(z: torch.Tensor, z_tilde: torch.Tensor, tau: float = 0.5, form: str = "paper") -> torch.Tensor:
    """Eq. 7: every normal embedding is pulled towards the other normal ones and pushed away
    from all pseudo-anomaly embeddings; mean over the batch.

    ``authors``: the authors' code puts in normal sample i's denominator the similarities of
    *its own* pseudo-anomaly to every normal embedding, sum_k exp(cos(z_k, z~_i) / tau), where
    eq. 7 has those of z_i to every pseudo-anomaly, sum_l exp(cos(z_i, z~_l) / tau): the same
    matrix of similarities, read by columns instead of rows."""
    n = len(z)
    if n < 2:
        raise ValueError("the contrastive loss needs at least two normal samples per batch")
    if form not in GUIDANCE_FORMS:
        raise ValueError(f"unknown guidance form {form!r}; choose from {', '.join(GUIDANCE_FORMS)}")
    to_normal = _similarities(z, z, tau)
    to_perturbed = _similarities(z, z_tilde, tau)
    if form == "authors":
        to_perturbed = to_perturbed.T
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z.device)
    denominator = torch.logsumexp(torch.cat([to_perturbed, to_normal.masked_fill(~off_diagonal, float("-inf"))],
                                            dim=1), dim=1)
    positives = (to_normal * off_diagonal).sum(dim=1) / (n - 1)
    return (denominator - positives).mean()


def mean_contrastive_loss(z: torch.Tensor, z_tilde: torch.Tensor, tau: float = 0.5, form: str = "paper") -> torch.Tensor:
    """Appendix eq. 9: each normal embedding against the mean normal and the mean
    pseudo-anomaly embedding (a two-way softmax at temperature tau).

    ``authors``: the authors' code takes the log-sum-exp over an axis of size one, which
    leaves the similarity itself, and has no tau: mean_i cos(z_i, mean z~) - cos(z_i, mean z),
    a plain difference of cosines rather than a softmax."""
    means = torch.stack([z.mean(0), z_tilde.mean(0)])
    if form == "authors":
        to_means = _similarities(z, means, 1.0)
        return (to_means[:, 1] - to_means[:, 0]).mean()
    if form != "paper":
        raise ValueError(f"unknown guidance form {form!r}; choose from {', '.join(GUIDANCE_FORMS)}")
    to_means = _similarities(z, means, tau)
    return (torch.logsumexp(to_means, dim=1) - to_means[:, 0]).mean()


def guidance_loss(guidance: str, z: torch.Tensor, z_tilde: torch.Tensor, tau: float, form: str = "paper") -> torch.Tensor:
    if guidance == "contrastive":
        return contrastive_loss(z, z_tilde, tau, form)
    if guidance == "mean":
        return mean_contrastive_loss(z, z_tilde, tau, form)
    if guidance == "none":
        return z.new_zeros(())
    raise ValueError(f"unknown guidance {guidance!r}; choose from {', '.join(GUIDANCES)}")
