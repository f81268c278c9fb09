"""AnoMem's torch modules and losses (AnoMem paper, section 3), on frozen features.

Every scale is a set of feature vectors per image: the intermediate map as its g x g
positions ("the image as patches", section 3.1), the last scale as the one pooled vector.
So a scale's data is (N, P, C) and everything below works on the last axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def input_statistics(flat: torch.Tensor, standardise: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What each input dimension is centred on and divided by before the projection, from
    the normal training rows ``flat`` (n, D); see ``Projection.forward`` for ``l2``.

    ``l2``: no centring, no division (rows are L2-normalised one by one instead).
    ``global``: centred on the mean, then one divisor for every dimension, the root mean
    square deviation over all of them, so the channels keep their relative scales.
    ``dimension``: centred, then each dimension's std, floored at the median std of the
    dimensions that vary. The floor is what matters: a channel that never fires on the
    training images (std 0; 166 to 242 of EfficientNet's 1,280 pooled channels within one
    digit) would otherwise multiply any test activation by the reciprocal of a tiny floor
    and swamp every other dimension."""
    ones = torch.ones(flat.shape[-1], device=flat.device)
    if standardise == "l2":
        return torch.zeros_like(ones), ones
    std = flat.std(0) if len(flat) > 1 else torch.zeros_like(ones)
    varying = std[std > 0]
    if not len(varying):
        return flat.mean(0), ones
    if standardise == "global":
        return flat.mean(0), ones * float(torch.sqrt((std ** 2).mean()))
    if standardise == "dimension":
        return flat.mean(0), std.clamp_min(float(varying.median()))
    raise ValueError(f"unknown standardisation {standardise!r}")


class Projection(nn.Module):
    """The trainable part that replaces the paper's encoder stage: the frozen feature centred
    and scaled with the normal training rows' statistics (``input_statistics``), or with
    ``l2`` scaled to norm sqrt(D) (each row alone: no statistics), then a 2-layer MLP
    (SimCLR's projection head), or nothing more without ``mlp`` (z is the scaled feature)."""

    def __init__(self, in_dim: int, hidden: int = 512, out_dim: int = 128, l2: bool = False, mlp: bool = True) -> None:
        super().__init__()
        self.l2 = l2
        self.out_dim = out_dim if mlp else in_dim
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))  # the divisor per dimension (stored: saved heads keep it)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)) if mlp \
            else nn.Identity()

    def set_statistics(self, features: torch.Tensor, standardise: str = "l2") -> None:
        mean, divisor = input_statistics(features.reshape(-1, features.shape[-1]).float(), standardise)
        self.mean.copy_(mean)
        self.std.copy_(divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.l2:
            # Norm sqrt(D): entries of the usual size for the first layer's initialisation.
            x = F.normalize(x, dim=-1) * x.shape[-1] ** 0.5
        return self.net((x - self.mean) / self.std)


class HopfieldMemory(nn.Module):
    """Modern Hopfield layer with a learnable memory (eq. 1): ``xi <- softmax(beta xi X) X^T``.

    ``patterns`` is X^T, one stored pattern per row (slots x dim). ``steps`` update steps:
    one retrieval step is what the paper's layer does per forward pass. With ``normalise``
    (cosine retrieval, an adaptation) queries and patterns are L2-normalised before each step,
    so ``beta`` acts on cosine similarities in [-1, 1] whatever the scale of the features,
    and a recollection is a convex combination of unit patterns.
    """

    def __init__(self, slots: int, dim: int, beta: float = 2.0, steps: int = 1, normalise: bool = False) -> None:
        super().__init__()
        self.beta, self.steps, self.normalise = beta, steps, normalise
        self.patterns = nn.Parameter(torch.randn(slots, dim) / dim ** 0.5)

    def stored(self) -> torch.Tensor:
        """The patterns as retrieval uses them (unit rows with ``normalise``)."""
        return F.normalize(self.patterns, dim=-1) if self.normalise else self.patterns

    def weights(self, xi: torch.Tensor) -> torch.Tensor:
        """The softmax over the slots of one retrieval step from ``xi`` (..., slots)."""
        if self.normalise:
            xi = F.normalize(xi, dim=-1)
        return torch.softmax(self.beta * xi @ self.stored().T, dim=-1)

    def forward(self, xi: torch.Tensor) -> torch.Tensor:
        patterns = self.stored()
        for _ in range(self.steps):
            xi = self.weights(xi) @ patterns
        return xi

    def nearest_distance(self, xi: torch.Tensor) -> torch.Tensor:
        """Euclidean distance from each query (normalised with ``normalise``) to its nearest
        stored pattern: what the recollection would be with an infinite ``beta``."""
        if self.normalise:
            xi = F.normalize(xi, dim=-1)
        patterns = self.stored()
        squared = (xi * xi).sum(-1, keepdim=True) - 2 * xi @ patterns.T + (patterns * patterns).sum(-1)
        return squared.min(dim=-1).values.clamp_min(0).sqrt()


def memorise(z: torch.Tensor, is_normal: torch.Tensor, memory: nn.Module) -> torch.Tensor:
    """Eq. 3: ``Mem(z, y) = y HF(z) + (1 - y) z``; the memory sees normal samples only."""
    y = is_normal.to(z.dtype).reshape(-1, *([1] * (z.dim() - 1)))
    return y * memory(z) + (1 - y) * z


def nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 4-5 for one batch of pairs (a_k, b_k), both directions averaged: SimCLR's NT-Xent
    with cosine similarity over the 2B representations, the positive being the other view."""
    n = a.shape[0]
    reps = F.normalize(torch.cat([a, b]), dim=-1)
    logits = reps @ reps.T / tau
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=a.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(a.device)
    return F.cross_entropy(logits, target)


def variance_loss(retrieved: torch.Tensor, target: float | None = None, eps: float = 1e-4) -> torch.Tensor:
    """Eq. 6: minus the standard deviation of the retrieved normal samples; with ``target``,
    VICReg's hinge ``max(0, target - std)`` instead.

    The paper's Var[Mem(z_k)] is read as the variance over the batch, per dimension (as in
    VICReg), averaged over dimensions: that is what goes to zero when every prototype
    collapses to one point, which is what the loss is there to stop. The paper's form keeps
    rewarding a larger spread without bound (nothing else ties the scale of z: NT-Xent reads
    directions only); the hinge stops rewarding it once each dimension's std reaches ``target``.
    """
    if retrieved.shape[0] < 2:
        return retrieved.new_zeros(())
    std = torch.sqrt(retrieved.var(dim=0) + eps)
    if target is None:
        return -std.mean()
    return F.relu(target - std).mean()


def recall_loss(z: torch.Tensor, memory: "HopfieldMemory") -> torch.Tensor:
    """Squared distance between normal features and their recollection, with the features held
    fixed (only the memory learns from it): it keeps the slots near the normal class's
    projected features, which the contrastive loss alone does not (an adaptation, not in the
    paper). ``z``: (n, d) normal rows."""
    if not len(z):
        return z.new_zeros(())
    z = z.detach()
    if memory.normalise:
        z = F.normalize(z, dim=-1)
    return ((z - memory(z)) ** 2).sum(-1).mean()


def double_hinge(distance: torch.Tensor, is_normal: torch.Tensor, margin: float = 2.0) -> torch.Tensor:
    """Eq. 11, averaged: normal samples inside the ball of radius 1/M, anomalies beyond M."""
    y = is_normal.to(distance.dtype)
    return (y * F.relu(distance - 1 / margin) + (1 - y) * F.relu(margin - distance)).mean()


class ScaleClassifier(nn.Module):
    """Stage B, semi-supervised: average pooling of the difference map to ``pool`` x ``pool``
    positions, then a 2-layer MLP with one output, the scale's anomaly distance (eq. 10)."""

    def __init__(self, dim: int, positions: int, pool: int = 1, hidden: int = 128) -> None:
        super().__init__()
        self.grid = int(round(positions ** 0.5))
        if self.grid * self.grid != positions:
            raise ValueError(f"{positions} positions are not a square grid")
        self.pool = min(pool, self.grid)
        self.mlp = nn.Sequential(nn.Linear(dim * self.pool * self.pool, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        n, p, d = delta.shape
        square = delta.transpose(1, 2).reshape(n, d, self.grid, self.grid)
        pooled = F.adaptive_avg_pool2d(square, self.pool).reshape(n, -1)
        return self.mlp(pooled).squeeze(-1)
